"""The synchronous client's first-order derivative calls: JVP, VJP, the full Jacobian
(the stream policy, and splitting it over replicas), parameter gradients.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from jacserve.client._analysis import prepare_sparse_jacobian
from jacserve.client._calls import (
    Prepared,
    SliceCallback,
    jacobian_key,
    prepare_gradients,
    prepare_jacobian,
    prepare_jvp,
    prepare_stream_jacobian,
    prepare_vjp,
    result_bytes,
)
from jacserve.client._client_transport import _UNSET, Inputs, Model, SyncTransport
from jacserve.client._connection import CallOptions, Metadata
from jacserve.client._fisher import prepare_parameter_jacobian
from jacserve.client._results import GradientsResult, JacobianResult, JvpResult, VjpResult
from jacserve.client._sharding import pass_window_plan
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["DerivativeCalls"]


class DerivativeCalls(SyncTransport):
    """:class:`~jacserve.client.Client`'s first-order derivative methods."""

    def jvp(
        self,
        model: Model,
        primals: Inputs,
        tangents: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        batched: bool = False,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
        verify: int | bool = 0,
    ) -> JvpResult:
        """Jacobian-vector product ``J·v`` at ``primals``.

        Args:
            model: a model id, or anything :meth:`upload` takes (uploaded once).
            primals: a tensor or NumPy array, or a tuple of them (one per model input).
            tangents: one per differentiated input (``wrt`` order), same shape and dtype.
            wrt: indices of the inputs to differentiate; default every floating input.
            batched: each tangent has an extra leading dimension k; the server computes
                the k JVPs in one vectorized call and ``jvp`` gains that leading k.
            device: where to compute (``"cpu"``, ``"cuda"``); default the server's.
            method: the model method to call.
            timeout: deadline in seconds for this call (default: the client's).
            metadata: gRPC metadata for this call, after the client's.
            compression: a ``grpc.Compression`` for this call (default: the client's).
            verify: check the answer against float64 central finite differences along
                the tangent (the first ``verify`` tangents when batched; ``True``: 3);
                the relative errors are in ``metrics.verification``.

        Returns:
            :class:`JvpResult`: ``output`` and ``jvp``, each a tensor or a tuple like the
            model's output, and ``metrics``.

        >>> r = client.jvp(model_id, torch.ones(3), torch.tensor([1.0, 0.0, 0.0]))
        >>> r.jvp.shape, r.metrics.mode
        (torch.Size([2]), 'forward')
        """
        prepared = prepare_jvp(
            primals, tangents, wrt=wrt, batched=batched, device=device, verify=verify
        )
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    def vjp(
        self,
        model: Model,
        primals: Inputs,
        cotangents: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        batched: bool = False,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
        verify: int | bool = 0,
    ) -> VjpResult:
        """Vector-Jacobian product ``uᵀ·J`` at ``primals``.

        Args:
            model: a model id, or anything :meth:`upload` takes.
            primals: a tensor or NumPy array, or a tuple of them (one per model input).
            cotangents: one per model output, same shape and dtype as that output.
            wrt: indices of the inputs to differentiate; default every floating input.
            batched: each cotangent has an extra leading dimension k; the k VJPs share
                one recorded forward pass and ``vjp`` gains that leading k.
            device: where to compute (``"cpu"``, ``"cuda"``); default the server's.
            method: the model method to call.
            timeout: deadline in seconds for this call.
            metadata: gRPC metadata for this call, after the client's.
            compression: a ``grpc.Compression`` for this call (default: the client's).
            verify: check ``uᵀJ`` against float64 central finite differences in this
                many random directions (``True``: 3); see ``metrics.verification``.

        Returns:
            :class:`VjpResult`: ``vjp`` is a tensor when ``primals`` is a single tensor,
            else a tuple with one tensor per differentiated input.

        >>> r = client.vjp(model_id, torch.ones(3), torch.ones(2))
        >>> r.vjp.shape, r.metrics.mode
        (torch.Size([3]), 'reverse')
        """
        prepared = prepare_vjp(
            primals, cotangents, wrt=wrt, batched=batched, device=device, verify=verify
        )
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))

    def jacobian(
        self,
        model: Model,
        inputs: Inputs,
        *,
        mode: str = "auto",
        wrt: Sequence[int] | str | None = None,
        batched: bool = False,
        max_memory_bytes: int = 0,
        chunk_size: int = 0,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
        stream: bool | None = None,
        progress: bool | None = None,
        on_slice: SliceCallback | None = None,
        max_block_bytes: int = 0,
        shards: int | None = None,
        verify: int | bool = 0,
        sparsity: Any = None,
        probes: int = 0,
        parameters: Sequence[str] | None = None,
    ) -> Any:
        """The full Jacobian at ``inputs``.

        Args:
            model: a model id, or anything :meth:`upload` takes.
            inputs: a tensor or NumPy array, or a tuple of them (one per model input).
            mode: ``"auto"`` (the server measures both modes on first use and picks the
                cheaper), ``"forward"`` or ``"reverse"``.
            wrt: indices of the inputs to differentiate; default every floating input.
            batched: each input has a leading dimension B of points; the result holds a
                Jacobian per point (every block gains that leading B).
            max_memory_bytes: peak memory the server may use for the passes and the
                result; it chunks the passes to fit (0: the server's default budget).
            chunk_size: at most this many passes per vectorized call (0: no limit).
            device: where to compute (``"cpu"``, ``"cuda"``); default the server's.
            method: the model method to call.
            timeout: deadline in seconds for this call.
            metadata: gRPC metadata for this call, after the client's.
            compression: a ``grpc.Compression`` for this call (default: the client's).
            stream: receive the Jacobian as a stream of slices (``StreamJacobian``), so that
                no message exceeds the message limit whatever its size and the client
                holds one copy plus one slice; ``False``: one message (``Jacobian``).
                Default: stream the first Jacobian of a model, method and input signature,
                and later ones only if it was above half the message limit (small results
                are ~0.9 ms faster in one message).
            progress: show a progress bar over the slices (default: when stderr is a
                terminal).
            on_slice: ``on_slice(block, start, values)`` receives every slice instead of
                the SDK assembling them (``jacobian`` of the result is then ``None``).
            max_block_bytes: tensor bytes per slice (default: the server's, 4 MiB).
            shards: split the passes into windows computed concurrently, ``shards`` at a
                time (see NOTE: [Scale-out of one Jacobian]); a failed window is redone on
                another replica. Default: one lane per target when the client has several,
                else the number of addresses of a ``dns:///`` target (its calls spread by
                round robin); 1 turns splitting off. Not with ``batched`` or ``on_slice``.
                Without ``shards``, a Jacobian the server estimates under 0.1 s (or, with
                no estimate, under 2²⁰ elements) is computed whole on one replica.
            verify: check the Jacobian against float64 central finite differences in
                this many random directions (``True``: 3; costs two model evaluations
                each); the relative errors are in ``metrics.verification``. Not with
                ``batched``; a verified Jacobian is not split across replicas.
            sparsity: compute a sparse Jacobian by compressed passes, one per colour of
                its pattern (``SparseJacobian``): ``"detect"`` (the server probes dense
                Jacobians at ``probes`` points once per signature — an entry zero at all
                of them is missed), an ``[M, N]`` mask or sparse tensor, or ``(rows,
                cols)``. ``jacobian`` is then a ``torch.sparse_coo_tensor`` of shape
                ``[M, N]`` over the flattened outputs and inputs, and
                ``metrics.passes`` is the number of colours.
            probes: points for pattern detection (0: 3).
            parameters: with ``wrt="parameters"`` (or alone), the parameter names to
                differentiate (default every floating parameter); see
                :meth:`parameter_jacobian`.

        Returns:
            :class:`JacobianResult`, structured as ``torch.autograd.functional.jacobian``
            (over the ``wrt`` inputs when ``inputs`` is a tuple); with
            ``wrt="parameters"`` or ``parameters``, a
            :class:`ParameterJacobianResult` whose ``jacobian`` maps each parameter
            name to its block ``[*output.shape, *parameter.shape]`` (only ``mode``,
            ``device`` and the call options apply).

        Raises:
            ValueError: unknown ``mode``.

        >>> r = client.jacobian(model_id, torch.randn(3))
        >>> r.jacobian.shape, r.metrics.mode, r.metrics.passes
        (torch.Size([2, 3]), 'reverse', 2)
        """
        opts = self._options(timeout, metadata, compression)
        if isinstance(wrt, str) and wrt != "parameters":
            raise ValueError(f"wrt: expected input indices or 'parameters'; got {wrt!r}")
        if isinstance(wrt, str) or parameters is not None:
            return self._derive(model, method, prepare_parameter_jacobian(
                inputs, parameters=parameters, mode=mode, device=device), opts)  # fmt: skip
        if sparsity is not None:
            if batched or verify or on_slice is not None:
                raise ValueError("sparsity: not with batched, verify or on_slice")
            prepared = prepare_sparse_jacobian(
                inputs, sparsity, wrt=wrt, mode=mode, probes=probes, device=device
            )
            return self._derive(model, method, prepared, opts)
        options = dict(mode=mode, wrt=wrt, batched=batched, max_memory_bytes=max_memory_bytes,
                       chunk_size=chunk_size, device=device, verify=verify)  # fmt: skip
        lanes = self._lanes(shards)
        key = jacobian_key(model, method, inputs, wrt, batched)
        splittable = not batched and on_slice is None and not verify
        if lanes > 1 and splittable and key not in self._whole:
            prepared = prepare_jacobian(inputs, **options)
            inputs_tuple = prepared.inputs
            split = self._with_model(
                model,
                method,
                lambda ref: self._sharded(
                    prepared, ref, lanes, opts, inputs_tuple, always=shards is not None
                ),
                opts,
                prepared.example,
            )
            if split is not None:
                return split
            self._whole.add(key)  # small: computed whole from now on, without a plan
        if stream is None:
            stream = self._needs_stream(key)
            if stream is None:
                info = self._call("GetServerInfo", pb.GetServerInfoRequest(), opts)
                self._server_limit = info.max_message_bytes
                stream = self._needs_stream(key)
        prepared = (
            prepare_stream_jacobian(
                inputs,
                **options,
                max_block_bytes=max_block_bytes,
                progress=progress,
                on_slice=on_slice,
            )
            if stream or on_slice is not None
            else prepare_jacobian(inputs, **options)
        )
        result = self._derive(model, method, prepared, opts)
        self._remember(key, result_bytes(result))
        return result

    def _sharded(
        self,
        prepared: Prepared[JacobianResult],
        ref: pb.FunctionRef,
        lanes: int,
        opts: CallOptions,
        inputs_tuple: Any,
        *,
        always: bool,
    ) -> JacobianResult | None:
        """The Jacobian by windows over the replicas; ``None`` when the plan says it is too
        small to gain from splitting (unless ``always``)."""
        prepared.function.CopyFrom(ref)
        deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
        plan_request = pass_window_plan(prepared.request)
        plan = self._call("Jacobian", plan_request, opts)
        if self._server_limit is None:
            info = self._call("GetServerInfo", pb.GetServerInfoRequest(), opts)
            self._server_limit = info.max_message_bytes

        def call(replica: int, request: pb.JacobianRequest, remaining: float | None) -> Any:
            pinned = replica if len(self._stubs) > 1 else None
            return self._call("Jacobian", request, opts.with_timeout(remaining), replica=pinned)

        sharded = self._splitter(plan, lanes, always, call)
        return None if sharded is None else sharded.run(plan_request, plan, inputs_tuple, deadline)

    def parameter_gradients(
        self,
        model: Model,
        inputs: Inputs,
        cotangent: Inputs | None = None,
        *,
        parameters: Sequence[str] | None = None,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
        verify: int | bool = 0,
    ) -> GradientsResult:
        """Gradients of ``cotangent · output`` with respect to the model's parameters.

        Args:
            model: a model id, or anything :meth:`upload` takes.
            inputs: a tensor or NumPy array, or a tuple of them (one per model input).
            cotangent: one tensor per output; ``None`` when the output is a single scalar
                (then this is the plain gradient of that scalar).
            parameters: names of the parameters to differentiate; default all.
            device: where to compute (``"cpu"``, ``"cuda"``); default the server's.
            method: the model method to call.
            timeout: deadline in seconds for this call.
            metadata: gRPC metadata for this call, after the client's.
            compression: a ``grpc.Compression`` for this call (default: the client's).

        Returns:
            :class:`GradientsResult` with ``gradients``: name → tensor of the
            parameter's shape. With ``verify`` (directions, ``True``: 3), the gradients
            are checked against float64 central finite differences along random
            parameter directions (``metrics.verification``).

        >>> r = client.parameter_gradients(model_id, torch.ones(3), torch.ones(2))
        >>> {name: tuple(g.shape) for name, g in r.gradients.items()}
        {'weight': (2, 3), 'bias': (2,)}
        """
        prepared = prepare_gradients(
            inputs, cotangent, parameters=parameters, device=device, verify=verify
        )
        return self._derive(model, method, prepared, self._options(timeout, metadata, compression))
