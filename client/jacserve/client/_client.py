"""The synchronous jacserve client."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import torch

from jacserve.client._archive import ModelSource, archive_bytes
from jacserve.client._results import (
    DerivativeMetrics,
    GradientsResult,
    JacobianResult,
    JvpResult,
    ModelInfo,
    TensorOrTuple,
    VjpResult,
)
from jacserve.client.errors import NotFound, from_rpc_error
from jacserve.codec import decode_tensor, decode_tensors, encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TARGET", "Client"]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 512 << 20
UPLOAD_CHUNK_BYTES = 1 << 20
_MODEL_ID = re.compile(r"[0-9a-f]{64}")
_MODES = {
    "auto": pb.DERIVATIVE_MODE_AUTO,
    "forward": pb.DERIVATIVE_MODE_FORWARD,
    "reverse": pb.DERIVATIVE_MODE_REVERSE,
}
_UNSET: Any = object()
_T = TypeVar("_T")

Model = ModelSource  # an id (64 hex characters) or anything upload() takes
Inputs = Any  # a tensor / ndarray, or a tuple or list of them (one per model input)


def _as_sequence(value: Inputs) -> tuple[bool, list[Any]]:
    """(whether the user passed a tuple/list, the items)."""
    if isinstance(value, tuple | list):
        return True, list(value)
    return False, [value]


def _structure(tensors: Sequence[torch.Tensor], as_tuple: bool) -> TensorOrTuple:
    return tuple(tensors) if as_tuple else tensors[0]


class Client:
    """A connection to a jacserve server.

    Args:
        target: ``host:port`` of the server.
        timeout: default deadline of each call in seconds; ``None`` waits indefinitely.
        max_message_bytes: largest message sent or received; match the server's
            ``--max-message-bytes``.
        metadata: extra gRPC metadata sent with every call.
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

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        authorization = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = (*authorization, *tuple(metadata))
        self._chunk_bytes = max(1, min(UPLOAD_CHUNK_BYTES, max_message_bytes - 1024))
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls or root_certificates or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.JacobianServiceStub(self._channel)
        self._known_ids: set[str] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, rpc: Callable[..., _T], request: Any, timeout: float | None) -> _T:
        try:
            return rpc(
                request,
                timeout=self.timeout if timeout is _UNSET else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def _with_model(
        self, model: Model, method: str, call: Callable[[pb.FunctionRef], _T], timeout: float | None
    ) -> _T:
        """Run ``call`` on a FunctionRef; re-upload once if the server lost an uploaded model."""
        is_id = isinstance(model, str) and _MODEL_ID.fullmatch(model) is not None
        model_id = model if is_id else self.upload(model, timeout=timeout)
        try:
            return call(pb.FunctionRef(model_id=model_id, method=method))
        except NotFound:
            if is_id:
                raise
            with self._lock:
                self._known_ids.discard(model_id)
            model_id = self.upload(model, timeout=timeout)
            return call(pb.FunctionRef(model_id=model_id, method=method))

    # -- models ---------------------------------------------------------------------------

    def upload(self, model: ModelSource, *, timeout: float | None = _UNSET) -> str:
        """Upload a model archive (once) and return its id, the SHA-256 of its bytes.

        Args:
            model: a path to an archive, its bytes, a ``torch.jit.ScriptModule`` or a
                ``torch.export.ExportedProgram``.
            timeout: deadline in seconds for this call (default: the client's).

        Returns:
            The model id (64 lowercase hex characters). Archives the server already
            has are not sent again.

        Raises:
            InvalidArgument: the server cannot load the archive (the message says why).
            ResourceExhausted: the archive is above the server's size limit.
            TypeError: ``model`` is none of the accepted types.

        >>> model_id = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        >>> len(model_id)
        64
        """
        data = archive_bytes(model)
        model_id = hashlib.sha256(data).hexdigest()
        with self._lock:
            if model_id in self._known_ids:
                return model_id
        try:
            self.get_model(model_id, timeout=timeout)
        except NotFound:

            def chunks() -> Iterator[pb.UploadModelRequest]:
                size = self._chunk_bytes
                yield pb.UploadModelRequest(chunk=data[:size], expected_model_id=model_id)
                for start in range(size, len(data), size):
                    yield pb.UploadModelRequest(chunk=data[start : start + size])

            self._call(self._stub.UploadModel, chunks(), timeout)
        with self._lock:
            self._known_ids.add(model_id)
        return model_id

    def get_model(self, model_id: str, *, timeout: float | None = _UNSET) -> ModelInfo:
        """Metadata of a model: format, methods and their inputs, parameters.

        Raises:
            NotFound: unknown id. InvalidArgument: malformed id.

        >>> info = client.get_model(model_id)
        >>> info.format, [(p.name, p.shape) for p in info.parameters]
        ('torchscript', [('weight', (2, 3)), ('bias', (2,))])
        """
        response = self._call(self._stub.GetModel, pb.GetModelRequest(model_id=model_id), timeout)
        return ModelInfo.from_wire(response.model)

    def list_models(self, *, timeout: float | None = _UNSET) -> list[ModelInfo]:
        """Metadata of every model on the server.

        >>> model_id in [m.model_id for m in client.list_models()]
        True
        """
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
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
        self._call(self._stub.DeleteModel, pb.DeleteModelRequest(model_id=model_id), timeout)
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

        Returns:
            :class:`JvpResult`: ``output`` and ``jvp``, each a tensor or a tuple like the
            model's output, and ``metrics``.

        >>> r = client.jvp(model_id, torch.ones(3), torch.tensor([1.0, 0.0, 0.0]))
        >>> r.jvp.shape, r.metrics.mode
        (torch.Size([2]), 'forward')
        """
        _, primal_list = _as_sequence(primals)
        _, tangent_list = _as_sequence(tangents)
        request = pb.JvpRequest(
            primals=encode_tensors(primal_list, name="primals"),
            tangents=encode_tensors(tangent_list, name="tangents"),
            wrt=list(wrt or ()),
            batched=batched,
            options=pb.ComputeOptions(device=device),
        )

        def call(ref: pb.FunctionRef) -> JvpResult:
            request.function.CopyFrom(ref)
            response = self._call(self._stub.Jvp, request, timeout)
            return JvpResult(
                output=_structure(decode_tensors(response.outputs), response.tuple_output),
                jvp=_structure(decode_tensors(response.jvp), response.tuple_output),
                metrics=DerivativeMetrics.from_wire(response.metrics),
            )

        return self._with_model(model, method, call, timeout)

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

        Returns:
            :class:`VjpResult`: ``vjp`` is a tensor when ``primals`` is a single tensor,
            else a tuple with one tensor per differentiated input.

        >>> r = client.vjp(model_id, torch.ones(3), torch.ones(2))
        >>> r.vjp.shape, r.metrics.mode
        (torch.Size([3]), 'reverse')
        """
        primals_tuple, primal_list = _as_sequence(primals)
        _, cotangent_list = _as_sequence(cotangents)
        request = pb.VjpRequest(
            primals=encode_tensors(primal_list, name="primals"),
            cotangents=encode_tensors(cotangent_list, name="cotangents"),
            wrt=list(wrt or ()),
            batched=batched,
            options=pb.ComputeOptions(device=device),
        )

        def call(ref: pb.FunctionRef) -> VjpResult:
            request.function.CopyFrom(ref)
            response = self._call(self._stub.Vjp, request, timeout)
            return VjpResult(
                output=_structure(decode_tensors(response.outputs), response.tuple_output),
                vjp=_structure(decode_tensors(response.vjp), primals_tuple),
                metrics=DerivativeMetrics.from_wire(response.metrics),
            )

        return self._with_model(model, method, call, timeout)

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

        Returns:
            :class:`JacobianResult`, structured as ``torch.autograd.functional.jacobian``
            (over the ``wrt`` inputs when ``inputs`` is a tuple).

        Raises:
            ValueError: unknown ``mode``.

        >>> r = client.jacobian(model_id, torch.randn(3))
        >>> r.jacobian.shape, r.metrics.mode, r.metrics.passes
        (torch.Size([2, 3]), 'reverse', 2)
        """
        if mode not in _MODES:
            raise ValueError(
                f"jacobian: expected mode 'auto', 'forward' or 'reverse'; got {mode!r}"
            )
        inputs_tuple, input_list = _as_sequence(inputs)
        request = pb.JacobianRequest(
            inputs=encode_tensors(input_list, name="inputs"),
            wrt=list(wrt or ()),
            mode=_MODES[mode],
            batched=batched,
            options=pb.ComputeOptions(
                max_memory_bytes=max_memory_bytes, chunk_size=chunk_size, device=device
            ),
        )

        def call(ref: pb.FunctionRef) -> JacobianResult:
            request.function.CopyFrom(ref)
            response = self._call(self._stub.Jacobian, request, timeout)
            outputs = decode_tensors(response.outputs)
            blocks = [
                decode_tensor(t, name=f"jacobian[{k}]") for k, t in enumerate(response.jacobian)
            ]
            n_in = len(blocks) // max(len(outputs), 1)
            rows = [tuple(blocks[i * n_in : (i + 1) * n_in]) for i in range(len(outputs))]
            if response.tuple_output:
                jac: Any = tuple(row if inputs_tuple else row[0] for row in rows)
            else:
                jac = rows[0] if inputs_tuple else rows[0][0]
            return JacobianResult(
                output=_structure(outputs, response.tuple_output),
                jacobian=jac,
                metrics=DerivativeMetrics.from_wire(response.metrics),
            )

        return self._with_model(model, method, call, timeout)

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
            parameter's shape.

        >>> r = client.parameter_gradients(model_id, torch.ones(3), torch.ones(2))
        >>> {name: tuple(g.shape) for name, g in r.gradients.items()}
        {'weight': (2, 3), 'bias': (2,)}
        """
        _, input_list = _as_sequence(inputs)
        cotangent_list = [] if cotangent is None else _as_sequence(cotangent)[1]
        request = pb.ParameterGradientsRequest(
            inputs=encode_tensors(input_list, name="inputs"),
            cotangents=encode_tensors(cotangent_list, name="cotangents"),
            parameters=list(parameters or ()),
            options=pb.ComputeOptions(device=device),
        )

        def call(ref: pb.FunctionRef) -> GradientsResult:
            request.function.CopyFrom(ref)
            response = self._call(self._stub.ParameterGradients, request, timeout)
            return GradientsResult(
                output=_structure(decode_tensors(response.outputs), response.tuple_output),
                gradients={
                    g.name: decode_tensor(g.tensor, name=f"gradients[{g.name!r}]")
                    for g in response.gradients
                },
                metrics=DerivativeMetrics.from_wire(response.metrics),
            )

        return self._with_model(model, method, call, timeout)
