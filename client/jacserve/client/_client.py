"""The synchronous jacserve client."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from jacserve.client._analysis import (
    SensitivityResult,
    SingularResult,
    prepare_sensitivity,
    prepare_sparse_jacobian,
    prepare_top_singular,
)
from jacserve.client._archive import ModelSource, archive_bytes
from jacserve.client._calls import (
    Prepared,
    SliceCallback,
    jacobian_key,
    prepare_gradients,
    prepare_hessian,
    prepare_hvp,
    prepare_jacobian,
    prepare_jvp,
    prepare_stream_jacobian,
    prepare_vjp,
    result_bytes,
    upload_chunks,
)
from jacserve.client._connection import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    MODEL_ID,
    ClientBase,
)
from jacserve.client._results import (
    GradientsResult,
    HessianResult,
    HvpResult,
    JacobianResult,
    JvpResult,
    ModelInfo,
    VjpResult,
)
from jacserve.client._sharding import pass_window_plan
from jacserve.client.errors import DeadlineExceeded, NotFound, Unavailable, from_rpc_error
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TARGET", "Client"]

_UNSET: Any = object()
_T = TypeVar("_T")

Model = ModelSource  # an id (64 hex characters) or anything upload() takes
Inputs = Any  # a tensor / ndarray, or a tuple or list of them (one per model input)


class Client(ClientBase):
    """A connection to a jacserve server.

    Args:
        target: ``host:port`` of the server.
        timeout: default deadline of each call in seconds; ``None`` waits indefinitely.
        max_message_bytes: largest message sent or received; match the server's
            ``--max-message-bytes``.
        metadata: extra gRPC metadata sent with every call.
        retry: when to try a failed call again (default: up to 5 tries with exponential
            backoff on UNAVAILABLE and a busy server; ``RetryPolicy.off()`` disables).
        token: bearer token for a server started with ``--auth-token-file`` or
            ``JACSERVE_AUTH_TOKEN`` (sent as ``authorization: Bearer <token>``).
        tls: connect with TLS using the system's root certificates.
        root_certificates: PEM CA bundle that signed the server's certificate (implies TLS).
        private_key: PEM key of this client, for a server that requires mutual TLS.
        certificate_chain: PEM certificate of this client, for mutual TLS.

    Every method raises a :class:`~jacserve.client.errors.JacserveError` subclass on
    failure. Use as a context manager, or call :meth:`close`.

    >>> with Client(target, timeout=30) as c:  # target: "host:port", e.g. "127.0.0.1:50051"
    ...     linear = torch.jit.script(torch.nn.Linear(3, 2))
    ...     c.jacobian(linear, torch.randn(3)).jacobian.shape
    torch.Size([2, 3])
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels; the client cannot be used afterwards."""
        for channel in self._channels:
            channel.close()

    # -- plumbing -------------------------------------------------------------------------

    def _call(
        self,
        rpc: str,
        request: Any,
        timeout: float | None,
        *,
        streaming: bool = False,
        replica: int | None = None,
    ) -> Any:
        """Call ``rpc`` with retries (see :class:`RetryPolicy`) inside one deadline.

        ``request`` is a message, or a factory of a request stream (made anew per try).
        A ``streaming`` response is returned as an iterator whose first message has
        arrived (so that failing to reach the server is retried too). With several
        targets, calls take turns and a retry goes to the next replica at once (a wait
        only after every replica failed); a ``replica`` given pins one try to it.
        """
        timeout = self.timeout if timeout is _UNSET else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        index = self._take_turn() if replica is None else replica
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                response = getattr(self._stubs[index], rpc)(
                    request() if callable(request) else request,
                    timeout=remaining,
                    metadata=self._settings.metadata,
                )
                if not streaming:
                    return response
                return itertools.chain([next(response)], response)
            except StopIteration:
                return iter(())
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            if replica is not None:
                raise error
            wait, index = self._after_failure(error, attempt, deadline, index)
            attempt += 1
            time.sleep(wait)

    def _with_model(
        self,
        model: Model,
        method: str,
        call: Callable[[pb.FunctionRef], _T],
        timeout: float | None,
        example: Sequence[Any] = (),
    ) -> _T:
        """Run ``call`` on a FunctionRef; re-upload once if the server lost an uploaded model."""
        is_id = isinstance(model, str) and MODEL_ID.fullmatch(model) is not None
        model_id = (
            model if is_id else self.upload(model, example_inputs=example or None, timeout=timeout)
        )
        try:
            return call(pb.FunctionRef(model_id=model_id, method=method))
        except NotFound:
            if is_id:
                raise
            with self._lock:
                self._known_ids.discard(model_id)
            model_id = self.upload(model, example_inputs=example or None, timeout=timeout)
            return call(pb.FunctionRef(model_id=model_id, method=method))

    def _derive(
        self, model: Model, method: str, prepared: Prepared[_T], timeout: float | None
    ) -> _T:
        def call(ref: pb.FunctionRef) -> _T:
            prepared.function.CopyFrom(ref)
            if not prepared.streaming:
                return prepared.parse(self._call(prepared.rpc, prepared.request, timeout))
            messages = self._call(prepared.rpc, prepared.request, timeout, streaming=True)
            assembler = prepared.parse(None)
            try:
                for message in messages:
                    assembler.feed(message)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            return assembler.result()

        return self._with_model(model, method, call, timeout, prepared.example)

    # -- models ---------------------------------------------------------------------------

    def upload(
        self,
        model: ModelSource,
        *,
        example_inputs: Sequence[Any] | None = None,
        timeout: float | None = _UNSET,
    ) -> str:
        """Upload a model archive (once) and return its id, the SHA-256 of its bytes.

        Args:
            model: a path to an archive, its bytes, a ``torch.jit.ScriptModule``, a
                ``torch.export.ExportedProgram``, or a plain ``nn.Module`` or function of
                tensors (exported with torch.export, else scripted, else traced, using
                ``example_inputs``; serialized once per code, weights and input shapes).
            example_inputs: inputs for exporting a plain module or function. Derivative
                calls given a module or function use their own inputs.
            timeout: deadline in seconds for this call (default: the client's).

        Returns:
            The model id (64 lowercase hex characters). Archives the server already
            has are not sent again.

        Raises:
            InvalidArgument: the server cannot load the archive (the message says why).
            ResourceExhausted: the archive is above the server's size limit.
            TypeError: ``model`` is none of the accepted types.
            ValueError: a module or function that cannot be exported, scripted or traced
                (the message names each failure).

        >>> model_id = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        >>> len(model_id)
        64
        """
        data = archive_bytes(model, example_inputs)
        model_id = hashlib.sha256(data).hexdigest()
        with self._lock:
            if model_id in self._known_ids:
                return model_id
        if len(self._stubs) == 1:
            self._upload_to(None, data, model_id, timeout)
        else:  # every replica that answers; windows on one that did not move elsewhere
            failures = []
            for replica in range(len(self._stubs)):
                try:
                    self._upload_to(replica, data, model_id, timeout)
                except (Unavailable, DeadlineExceeded) as exc:
                    failures.append(exc)
            if len(failures) == len(self._stubs):
                raise failures[-1]
        with self._lock:
            self._known_ids.add(model_id)
        return model_id

    def _upload_to(
        self, replica: int | None, data: bytes, model_id: str, timeout: float | None
    ) -> None:
        try:
            self._call("GetModel", pb.GetModelRequest(model_id=model_id), timeout, replica=replica)
        except NotFound:
            chunks = upload_chunks(data, self._settings.upload_chunk_bytes)
            self._call("UploadModel", chunks, timeout, replica=replica)

    def get_model(self, model_id: str, *, timeout: float | None = _UNSET) -> ModelInfo:
        """Metadata of a model: format, methods and their inputs, parameters.

        Raises:
            NotFound: unknown id. InvalidArgument: malformed id.

        >>> info = client.get_model(model_id)
        >>> info.format, [(p.name, p.shape) for p in info.parameters]
        ('torchscript', [('weight', (2, 3)), ('bias', (2,))])
        """
        response = self._call("GetModel", pb.GetModelRequest(model_id=model_id), timeout)
        return ModelInfo.from_wire(response.model)

    def list_models(self, *, timeout: float | None = _UNSET) -> list[ModelInfo]:
        """Metadata of every model on the server.

        >>> model_id in [m.model_id for m in client.list_models()]
        True
        """
        response = self._call("ListModels", pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_wire(m) for m in response.models]

    def delete_model(self, model_id: str, *, timeout: float | None = _UNSET) -> None:
        """Remove a model from the server.

        Raises:
            NotFound: unknown id.

        >>> scratch = client.upload(torch.jit.script(torch.nn.Linear(2, 2)))
        >>> client.delete_model(scratch)
        >>> scratch in [m.model_id for m in client.list_models()]
        False
        """
        self._call("DeleteModel", pb.DeleteModelRequest(model_id=model_id), timeout)
        with self._lock:
            self._known_ids.discard(model_id)

    # -- derivatives ----------------------------------------------------------------------

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
        return self._derive(model, method, prepared, timeout)

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
        return self._derive(model, method, prepared, timeout)

    def jacobian(
        self,
        model: Model,
        inputs: Inputs,
        *,
        mode: str = "auto",
        wrt: Sequence[int] | None = None,
        batched: bool = False,
        max_memory_bytes: int = 0,
        chunk_size: int = 0,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
        stream: bool | None = None,
        progress: bool | None = None,
        on_slice: SliceCallback | None = None,
        max_block_bytes: int = 0,
        shards: int | None = None,
        verify: int | bool = 0,
        sparsity: Any = None,
        probes: int = 0,
    ) -> JacobianResult:
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

        Returns:
            :class:`JacobianResult`, structured as ``torch.autograd.functional.jacobian``
            (over the ``wrt`` inputs when ``inputs`` is a tuple).

        Raises:
            ValueError: unknown ``mode``.

        >>> r = client.jacobian(model_id, torch.randn(3))
        >>> r.jacobian.shape, r.metrics.mode, r.metrics.passes
        (torch.Size([2, 3]), 'reverse', 2)
        """
        if sparsity is not None:
            if batched or verify or on_slice is not None:
                raise ValueError("sparsity: not with batched, verify or on_slice")
            prepared = prepare_sparse_jacobian(
                inputs, sparsity, wrt=wrt, mode=mode, probes=probes, device=device
            )
            return self._derive(model, method, prepared, timeout)
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
                    prepared, ref, lanes, timeout, inputs_tuple, always=shards is not None
                ),
                timeout,
                prepared.example,
            )
            if split is not None:
                return split
            self._whole.add(key)  # small: computed whole from now on, without a plan
        if stream is None:
            stream = self._needs_stream(key)
            if stream is None:
                info = self._call("GetServerInfo", pb.GetServerInfoRequest(), timeout)
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
        result = self._derive(model, method, prepared, timeout)
        self._remember(key, result_bytes(result))
        return result

    def _sharded(
        self,
        prepared: Prepared[JacobianResult],
        ref: pb.FunctionRef,
        lanes: int,
        timeout: Any,
        inputs_tuple: Any,
        *,
        always: bool,
    ) -> JacobianResult | None:
        """The Jacobian by windows over the replicas; ``None`` when the plan says it is too
        small to gain from splitting (unless ``always``)."""
        prepared.function.CopyFrom(ref)
        timeout = self.timeout if timeout is _UNSET else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        plan_request = pass_window_plan(prepared.request)
        plan = self._call("Jacobian", plan_request, timeout)
        if self._server_limit is None:
            info = self._call("GetServerInfo", pb.GetServerInfoRequest(), timeout)
            self._server_limit = info.max_message_bytes

        def call(replica: int, request: pb.JacobianRequest, remaining: float | None) -> Any:
            pinned = replica if len(self._stubs) > 1 else None
            return self._call("Jacobian", request, remaining, replica=pinned)

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
        return self._derive(model, method, prepared, timeout)

    # -- second order ---------------------------------------------------------------------

    def hvp(
        self,
        model: Model,
        inputs: Inputs,
        vectors: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        batched: bool = False,
        gauss_newton: bool = False,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
    ) -> HvpResult:
        """Hessian-vector product ``H·v`` of a scalar function (forward-over-reverse: one
        JVP of the gradient, about three evaluations whatever the input size).

        Args:
            model: a model id, or anything :meth:`upload` takes.
            inputs: the point: a tensor or a tuple (one per model input).
            vectors: one per differentiated input, shaped like it.
            wrt: indices of the inputs to differentiate; default every floating input.
            batched: each vector has a leading dimension k; k products in one call.
            gauss_newton: ``Jᵀ·(J·v)`` instead (the Gauss–Newton matrix; for any output
                shape, no second derivatives).
            device: where to compute; default the server's.
            method: the model method to call.
            timeout: deadline in seconds for this call.

        Raises:
            InvalidArgument: the output is not a scalar (without ``gauss_newton``), or the
                vectors do not match the differentiated inputs.

        >>> f = lambda x: (x**3).sum()  # H = diag(6x)
        >>> client.hvp(f, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])).hvp
        tensor([ 6., 12.])
        """
        prepared = prepare_hvp(
            inputs, vectors, wrt=wrt, batched=batched, gauss_newton=gauss_newton, device=device
        )
        return self._derive(model, method, prepared, timeout)

    def hessian(
        self,
        model: Model,
        inputs: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        chunk_size: int = 0,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
    ) -> HessianResult:
        """The full Hessian of a scalar function: n Hessian-vector products over the
        basis, vectorized (``chunk_size`` caps products per call).

        Returns:
            :class:`HessianResult`, structured like ``torch.autograd.functional.hessian``.

        Raises:
            InvalidArgument: the output is not a scalar. ResourceExhausted: n² above the
                server's element limit (ask for products instead).

        >>> f = lambda x: (x[0] * x[1]) ** 2
        >>> client.hessian(f, torch.tensor([1.0, 2.0])).hessian
        tensor([[8., 8.],
                [8., 2.]])
        """
        prepared = prepare_hessian(inputs, wrt=wrt, chunk_size=chunk_size, device=device)
        return self._derive(model, method, prepared, timeout)

    # -- analysis -------------------------------------------------------------------------

    def sensitivity(
        self,
        model: Model,
        inputs: Inputs,
        *,
        wrt: Sequence[int] | None = None,
        mode: str = "auto",
        top_k: int = 10,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
    ) -> SensitivityResult:
        """Normalized sensitivities in one call: elasticities ``(x_j / y_i)·∂y_i/∂x_j``,
        norms per input and per output element, and the ``top_k`` inputs by elasticity.

        >>> r = client.sensitivity(lambda x: x[0] * x[1] ** 2, torch.tensor([2.0, 3.0]))
        >>> r.elasticities  # y = x0·x1²: elasticities 1 and 2
        tensor([[1., 2.]], dtype=torch.float64)
        >>> ranked = [(t.element, round(t.score, 3)) for t in r.top_inputs]
        >>> ranked == [(1, 2.0), (0, 1.0)]  # x1 first: score 2
        True
        """
        prepared = prepare_sensitivity(inputs, wrt=wrt, mode=mode, top_k=top_k, device=device)
        return self._derive(model, method, prepared, timeout)

    def top_singular(
        self,
        model: Model,
        inputs: Inputs,
        k: int,
        *,
        wrt: Sequence[int] | None = None,
        steps: int = 0,
        device: str = "",
        method: str = "forward",
        timeout: float | None = _UNSET,
    ) -> SingularResult:
        """The ``k`` largest singular values of the Jacobian and their directions, without
        forming it (Lanczos bidiagonalization: ``steps`` JVPs and VJPs, default
        ``min(n, m, max(2k + 20, 40))``), with residuals that say how converged each is.

        >>> import torch
        >>> a = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> r = client.top_singular(lambda x: a @ x, torch.ones(3), k=2)
        >>> [round(v, 4) for v in r.values.tolist()], bool(r.residuals.max() < 1e-5)
        ([3.0, 2.0], True)
        """
        prepared = prepare_top_singular(inputs, k, wrt=wrt, steps=steps, device=device)
        return self._derive(model, method, prepared, timeout)
