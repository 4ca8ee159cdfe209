"""The gRPC servicer: validate → decode → call the registry and engine → encode.

It holds no math. Every failure is mapped to a status code in :func:`_status_for`, the
one place that knows both the domain errors and gRPC; unexpected exceptions become
INTERNAL with a request id the caller can quote (the traceback goes to the log only).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import torch

from jacserve.codec import TensorCodecError, decode_tensors, dtype_to_wire, encode_tensors
from jacserve.server import engine
from jacserve.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from jacserve.server.metrics import ServiceMetrics
from jacserve.server.registry import (
    ArchiveFormat,
    LoadedModel,
    MethodInfo,
    ModelInfo,
    ModelRegistry,
)
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

__all__ = ["REQUEST_ID_KEY", "JacobianServicer"]

_LOG = logging.getLogger(__name__)
REQUEST_ID_KEY = "x-request-id"
_Response = TypeVar("_Response")

_STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorCodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)
_MODE_FROM_WIRE = {
    pb.DERIVATIVE_MODE_UNSPECIFIED: "auto",
    pb.DERIVATIVE_MODE_AUTO: "auto",
    pb.DERIVATIVE_MODE_FORWARD: "forward",
    pb.DERIVATIVE_MODE_REVERSE: "reverse",
}
_MODE_TO_WIRE = {"forward": pb.DERIVATIVE_MODE_FORWARD, "reverse": pb.DERIVATIVE_MODE_REVERSE}
_FORMAT_TO_WIRE = {
    ArchiveFormat.TORCHSCRIPT: pb.MODEL_FORMAT_TORCHSCRIPT,
    ArchiveFormat.TORCH_EXPORT: pb.MODEL_FORMAT_TORCH_EXPORT,
}


def _status_for(exc: Exception) -> grpc.StatusCode | None:
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code
    return None


class _Phases:
    """Wall time per phase of one request, in seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {"decode": 0.0, "load": 0.0, "encode": 0.0}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - began


def _rpc(name: str) -> Callable[[Callable[..., _Response]], Callable[..., _Response]]:
    """Wrap a handler: request id, error mapping, logging and Prometheus, in one place."""

    def decorate(handler: Callable[..., _Response]) -> Callable[..., _Response]:
        @functools.wraps(handler)
        def wrapper(
            self: JacobianServicer, request: Any, context: grpc.ServicerContext
        ) -> _Response:
            metadata = dict(context.invocation_metadata() or ())
            request_id = str(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex)[:64]
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            started = time.perf_counter()
            mode, passes, code = "none", 0, grpc.StatusCode.OK
            try:
                response = handler(self, request, context)
                metrics = getattr(response, "metrics", None)
                if metrics is not None and metrics.mode:
                    mode = (
                        pb.DerivativeMode.Name(metrics.mode)
                        .removeprefix("DERIVATIVE_MODE_")
                        .lower()
                    )
                    passes = metrics.passes
                return response
            except Exception as exc:
                mapped = _status_for(exc)
                if mapped is None:
                    code = grpc.StatusCode.INTERNAL
                    _LOG.exception("rpc=%s request_id=%s failed unexpectedly", name, request_id)
                    message = (
                        f"{name}: internal error (request id {request_id}); "
                        "the server log has the details"
                    )
                else:
                    code, message = mapped, f"{name}: {exc}"
                context.abort(code, message)
                raise  # unreachable: abort raises
            finally:
                seconds = time.perf_counter() - started
                _LOG.info(
                    "rpc=%s request_id=%s code=%s mode=%s passes=%d seconds=%.6f",
                    name,
                    request_id,
                    code.name,
                    mode,
                    passes,
                    seconds,
                )
                self._metrics.observe_rpc(
                    name, mode=mode, code=code.name, seconds=seconds, passes=passes
                )

        return wrapper

    return decorate


def model_info_to_wire(info: ModelInfo) -> pb.ModelInfo:
    """Convert registry metadata to its message."""
    methods = [
        pb.MethodInfo(
            name=m.name,
            inputs=[
                pb.InputInfo(
                    name=i.name,
                    dtype=dtype_to_wire(i.dtype) if i.dtype is not None else pb.DTYPE_UNSPECIFIED,
                    shape=list(i.shape or ()),
                    has_shape=i.shape is not None,
                )
                for i in m.inputs
            ],
        )
        for m in info.methods
    ]
    parameters = [
        pb.ParameterInfo(name=p.name, shape=list(p.shape), dtype=dtype_to_wire(p.dtype))
        for p in info.parameters
    ]
    return pb.ModelInfo(
        model_id=info.model_id,
        format=_FORMAT_TO_WIRE[info.format],
        archive_size_bytes=info.archive_size_bytes,
        methods=methods,
        parameters=parameters,
    )


class JacobianServicer(pb_grpc.JacobianServiceServicer):
    """Implements ``jacserve.v1.JacobianService`` over a registry and the engine.

    Args:
        registry: where models are registered and loaded.
        metrics: the Prometheus sink.
        max_tensor_elements: cap on the elements of any request tensor and of a Jacobian.
        max_message_bytes: cap on a response's tensor bytes (the gRPC message limit).
        max_memory_bytes: default memory budget of a Jacobian (0: none).
        device: default device of derivative requests.
        memory_meter: how CPU peak memory is measured ("rss" or "tensors").
    """

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServiceMetrics,
        *,
        max_tensor_elements: int,
        max_message_bytes: int,
        max_memory_bytes: int = 0,
        device: str = "cpu",
        memory_meter: str = "rss",
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._max_elements = max_tensor_elements
        self._max_message_bytes = max_message_bytes
        self._default_memory_budget = max_memory_bytes
        self._default_device = device
        self._memory_meter = memory_meter

    # -- models ---------------------------------------------------------------------------

    @_rpc("UploadModel")
    def UploadModel(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: Any
    ) -> pb.UploadModelResponse:
        data = bytearray()
        expected_id = ""
        limit = self._registry.max_archive_bytes
        for chunk in request_iterator:
            expected_id = expected_id or chunk.expected_model_id
            data += chunk.chunk
            if len(data) > limit:
                raise ResourceExhausted(
                    f"archive is larger than the server's limit of {limit} bytes "
                    "(--max-archive-bytes); upload a smaller model or raise the limit"
                )
        info, already = self._registry.add(bytes(data), expected_id=expected_id)
        return pb.UploadModelResponse(model=model_info_to_wire(info), already_present=already)

    @_rpc("GetModel")
    def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=model_info_to_wire(self._registry.info(request.model_id)))

    @_rpc("ListModels")
    def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info_to_wire(i) for i in self._registry.list()])

    @_rpc("DeleteModel")
    def DeleteModel(self, request: pb.DeleteModelRequest, context: Any) -> pb.DeleteModelResponse:
        self._registry.delete(request.model_id)
        return pb.DeleteModelResponse()

    # -- derivatives ----------------------------------------------------------------------

    def _device(self, options: pb.ComputeOptions) -> str:
        """The device a request runs on: its own choice, else the server's."""
        name = options.device or self._default_device
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InvalidArgument(
                f"options.device: expected 'cpu', 'cuda' or 'cuda:N'; got {name!r}"
            ) from None
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise InvalidArgument(
                f"options.device: {name!r} is not available on this server, which has "
                f"{count} CUDA device(s); use 'cpu'"
                + (f" or one of cuda:0..cuda:{count - 1}" if count else "")
            )
        if device.type not in ("cpu", "cuda"):
            raise InvalidArgument(f"options.device: only cpu and cuda are supported; got {name!r}")
        return str(device)

    def _prepare(
        self,
        phases: _Phases,
        ref: pb.FunctionRef,
        options: pb.ComputeOptions,
        **fields: Sequence[pb.Tensor],
    ) -> tuple[LoadedModel, Callable[..., Any], MethodInfo, dict[str, tuple[torch.Tensor, ...]]]:
        """Decode the request's tensors and load its model, both on the request's device."""
        device = self._device(options)
        with phases.phase("decode"):
            tensors = {
                name: tuple(
                    t.to(device)
                    for t in decode_tensors(messages, name=name, max_elements=self._max_elements)
                )
                for name, messages in fields.items()
            }
        with phases.phase("load"):
            source = ref.WhichOneof("source")
            if source == "archive":
                model_id = self._registry.add(ref.archive)[0].model_id
            elif source == "model_id":
                model_id = ref.model_id
            else:
                raise InvalidArgument(
                    "function: expected model_id (from UploadModel) or an inline archive; got neither"
                )
            model = self._registry.get(model_id, device)
        fn, method = model.method(ref.method or "forward")
        return model, fn, method, tensors

    @staticmethod
    def _ensure_active(context: grpc.ServicerContext) -> None:
        """Skip the derivative work when the caller has already given up."""
        if not context.is_active():
            raise DeadlineExceeded(
                "the call's deadline passed or it was cancelled before the derivative was "
                "computed; nothing was computed. Raise the timeout for this model and size"
            )

    def _encode(self, phases: _Phases, *groups: Sequence[torch.Tensor]) -> list[list[pb.Tensor]]:
        size = sum(t.numel() * t.element_size() for group in groups for t in group)
        if size > self._max_message_bytes:
            raise ResourceExhausted(
                f"the response would carry {size} bytes of tensors, above the message limit of "
                f"{self._max_message_bytes} (--max-message-bytes); differentiate fewer inputs "
                "(wrt) or raise the limit on both server and client"
            )
        with phases.phase("encode"):
            return [encode_tensors(group) for group in groups]  # the codec moves them to CPU

    def _wire_metrics(self, result: engine.EngineResult, phases: _Phases) -> pb.DerivativeMetrics:
        m = result.metrics
        return pb.DerivativeMetrics(
            mode=_MODE_TO_WIRE[m.mode],
            mode_reason=m.mode_reason,
            input_size=m.input_size,
            output_size=m.output_size,
            passes=m.passes,
            vectorized=m.vectorized,
            fallback_reason=m.fallback_reason,
            timing=pb.PhaseTimings(
                decode_seconds=phases.seconds["decode"],
                load_seconds=phases.seconds["load"],
                forward_seconds=m.forward_seconds,
                derivative_seconds=m.derivative_seconds,
                encode_seconds=phases.seconds["encode"],
                total_seconds=time.perf_counter() - phases.start,
                plan_seconds=m.plan_seconds,
            ),
            peak_memory_bytes=m.peak_memory_bytes,
            memory_method=m.memory_method,
            nonfinite_count=m.nonfinite_count,
            warnings=list(m.warnings),
            device=m.device,
            chunks=m.chunks,
            chunk_size=m.chunk_size,
            batch_size=m.batch_size,
            estimated_forward_seconds=m.estimated_forward_seconds,
            estimated_reverse_seconds=m.estimated_reverse_seconds,
            memory_budget_bytes=m.memory_budget_bytes,
            estimated_peak_bytes=m.estimated_peak_bytes,
            execution_path=m.execution_path,
            compilation=m.compilation,
        )

    @_rpc("Jvp")
    def Jvp(self, request: pb.JvpRequest, context: Any) -> pb.JvpResponse:
        phases = _Phases()
        model, fn, method, t = self._prepare(
            phases,
            request.function,
            request.options,
            primals=request.primals,
            tangents=request.tangents,
        )
        model.check_inputs(method, t["primals"])
        self._ensure_active(context)
        result = engine.jvp(
            fn,
            t["primals"],
            t["tangents"],
            wrt=list(request.wrt),
            batched=request.batched,
            memory_meter=self._memory_meter,
            method=method.name,
        )
        outputs, values = self._encode(phases, result.outputs, result.values)
        return pb.JvpResponse(
            outputs=outputs,
            tuple_output=result.tuple_output,
            jvp=values,
            metrics=self._wire_metrics(result, phases),
        )

    @_rpc("Vjp")
    def Vjp(self, request: pb.VjpRequest, context: Any) -> pb.VjpResponse:
        phases = _Phases()
        model, fn, method, t = self._prepare(
            phases,
            request.function,
            request.options,
            primals=request.primals,
            cotangents=request.cotangents,
        )
        model.check_inputs(method, t["primals"])
        self._ensure_active(context)
        result = engine.vjp(
            fn,
            t["primals"],
            t["cotangents"],
            wrt=list(request.wrt),
            batched=request.batched,
            memory_meter=self._memory_meter,
            method=method.name,
        )
        outputs, values = self._encode(phases, result.outputs, result.values)
        return pb.VjpResponse(
            outputs=outputs,
            tuple_output=result.tuple_output,
            vjp=values,
            metrics=self._wire_metrics(result, phases),
        )

    @_rpc("Jacobian")
    def Jacobian(self, request: pb.JacobianRequest, context: Any) -> pb.JacobianResponse:
        phases = _Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        inputs = t["inputs"]
        model.check_inputs(method, inputs, batched=request.batched)
        mode = _MODE_FROM_WIRE.get(request.mode)
        if mode is None:
            raise InvalidArgument(f"mode: expected AUTO, FORWARD or REVERSE; got {request.mode}")
        options = request.options
        if options.max_memory_bytes < 0 or options.chunk_size < 0:
            raise InvalidArgument(
                "options: max_memory_bytes and chunk_size must be >= 0 (0 = server default); "
                f"got {options.max_memory_bytes} and {options.chunk_size}"
            )
        budget = options.max_memory_bytes or self._default_memory_budget
        self._ensure_active(context)
        result = engine.jacobian(
            fn,
            inputs,
            wrt=list(request.wrt),
            mode=mode,
            batched=request.batched,
            chunk_size=options.chunk_size or None,
            max_memory_bytes=budget or None,
            max_elements=self._max_elements,
            cache=model.derivative_cache,
            compiled=model.compiled_programs,
            memory_meter=self._memory_meter,
            method=method.name,
        )
        outputs, values = self._encode(phases, result.outputs, result.values)
        return pb.JacobianResponse(
            outputs=outputs,
            tuple_output=result.tuple_output,
            jacobian=values,
            metrics=self._wire_metrics(result, phases),
        )

    @_rpc("ParameterGradients")
    def ParameterGradients(
        self, request: pb.ParameterGradientsRequest, context: Any
    ) -> pb.ParameterGradientsResponse:
        phases = _Phases()
        model, fn, method, t = self._prepare(
            phases,
            request.function,
            request.options,
            inputs=request.inputs,
            cotangents=request.cotangents,
        )
        model.check_inputs(method, t["inputs"])
        parameters = model.parameters
        if request.parameters:
            unknown = [n for n in request.parameters if n not in parameters]
            if unknown:
                raise InvalidArgument(
                    f"parameters: unknown name(s) {unknown}; the model's parameters are "
                    f"{list(parameters)[:20]}"
                )
            parameters = {n: parameters[n] for n in request.parameters}
        self._ensure_active(context)
        result = engine.parameter_gradients(
            fn,
            t["inputs"],
            parameters,
            cotangents=t["cotangents"] or None,
            memory_meter=self._memory_meter,
            method=method.name,
        )
        outputs, values = self._encode(phases, result.outputs, result.values)
        return pb.ParameterGradientsResponse(
            outputs=outputs,
            tuple_output=result.tuple_output,
            gradients=[
                pb.NamedTensor(name=n, tensor=t) for n, t in zip(result.names, values, strict=True)
            ],
            metrics=self._wire_metrics(result, phases),
        )
