"""What a worker does with a request: decode → load the model → run the engine → encode.

These are the derivative RPCs' bodies without gRPC: each takes the request message and
an absolute deadline (``time.monotonic()`` seconds, shared by all processes of the
machine) and returns the response message, raising :mod:`jacserve.server.errors` for the
frontend to map to status codes. They run inside a worker process, never in the frontend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from jacserve.codec import (
    TensorCodecError,
    decode_tensor,
    encode_tensor,
    encode_tensors,
)
from jacserve.server import engine
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.errors import InvalidArgument, Reason, ResourceExhausted
from jacserve.server.registry import ArchiveRegistry, LoadedModel, MethodInfo
from jacserve.server.worker import structure, verify
from jacserve.server.worker.analysis import AnalysisHandlers
from jacserve.server.worker.global_sensitivity_handlers import GlobalSensitivityHandlers
from jacserve.server.worker.model_info import declared_input_types, model_info_to_wire
from jacserve.server.worker.parameter_handlers import ParameterHandlers
from jacserve.server.worker.phases import Phases, check_deadline
from jacserve.server.worker.propagation_handlers import PropagationHandlers
from jacserve.server.worker.second_order_handlers import SecondOrderHandlers
from jacserve.server.worker.streaming_handlers import STREAM_BLOCK_BYTES, StreamingHandlers
from jacserve.server.worker.wire_modes import MODE_TO_WIRE, mode_from_wire
from jacserve.v1 import jacobian_service_pb2 as pb

_Message = TypeVar("_Message")
__all__ = [
    "STREAM_BLOCK_BYTES",
    "DerivativeHandlers",
    "HandlerSettings",
]

"""Default tensor bytes per StreamJacobian message."""


@dataclass(frozen=True)
class HandlerSettings:
    """Server-wide defaults and caps of derivative requests."""

    max_tensor_elements: int
    max_message_bytes: int
    max_memory_bytes: int = 0
    device: str = "cpu"
    memory_meter: str = "rss"


def _decode_field(
    name: str, messages: Sequence[pb.Tensor], max_elements: int, device: str
) -> tuple[torch.Tensor, ...]:
    """Decode the repeated Tensor field ``name``; a bad tensor is INVALID_TENSOR naming it."""
    decoded = []
    for i, message in enumerate(messages):
        try:
            tensor = decode_tensor(message, name=f"{name}[{i}]", max_elements=max_elements)
        except TensorCodecError as exc:
            raise InvalidArgument(
                str(exc), reason=Reason.INVALID_TENSOR, field=f"{name}[{i}]"
            ) from None
        decoded.append(tensor.to(device))
    return tuple(decoded)


class DerivativeHandlers(
    AnalysisHandlers,
    SecondOrderHandlers,
    StreamingHandlers,
    GlobalSensitivityHandlers,
    PropagationHandlers,
    ParameterHandlers,
):
    """The derivative RPCs over a registry of loaded models and the engine.

    Args:
        registry: the worker's one archive.
        settings: caps and defaults.
    """

    def __init__(self, registry: ArchiveRegistry, settings: HandlerSettings) -> None:
        self._registry = registry
        self._settings = settings

    def describe(self) -> pb.ModelInfo:
        """The description of the worker's archive."""
        info = self._registry.info(self._registry.model_id)
        types = None
        if info.format.value == "torchscript":
            types = declared_input_types(self._registry.get(self._registry.model_id).module)
        return model_info_to_wire(info, types)

    def compiled_programs(self) -> list[CompiledPrograms]:
        """The archive's compiled programs, one set per device it is loaded on."""
        return self._registry.compiled_programs()

    def handle(self, method: str, request: Any, deadline: float) -> Any:
        """Run the derivative RPC ``method`` on ``request``; returns its response message."""
        handler: Callable[[Any, float], Any] = getattr(self, f"_{method}")
        return handler(request, deadline)

    def _device(self, options: pb.ComputeOptions) -> str:
        """The device a request runs on: its own choice, else the server's."""
        name = options.device or self._settings.device
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
        phases: Phases,
        ref: pb.FunctionRef,
        options: pb.ComputeOptions,
        **fields: Sequence[pb.Tensor],
    ) -> tuple[LoadedModel, Callable[..., Any], MethodInfo, dict[str, tuple[torch.Tensor, ...]]]:
        """Decode the request's tensors and load its model, both on the request's device."""
        device = self._device(options)
        with phases.phase("decode"):
            limit = self._settings.max_tensor_elements
            tensors = {
                name: _decode_field(name, messages, limit, device)
                for name, messages in fields.items()
            }
        with phases.phase("load"):
            if ref.WhichOneof("source") != "model_id":
                raise InvalidArgument(
                    "function: expected model_id (from UploadModel) or an inline archive; got neither"
                )
            model = self._registry.get(ref.model_id, device)
        fn, method = model.method(ref.method or "forward")
        return model, fn, method, tensors

    def _check_size(self, *groups: Sequence[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for group in groups for t in group)
        limit = self._settings.max_message_bytes
        if size > limit:
            raise ResourceExhausted(
                f"the response would carry {size} bytes of tensors, above the message limit of "
                f"{limit} (--max-message-bytes); differentiate fewer inputs "
                "(wrt) or raise the limit on both server and client",
                reason=Reason.MESSAGE_TOO_LARGE,
                bytes_needed=size,
                limit_bytes=limit,
            )

    def _encode(
        self, phases: Phases, response: _Message, **fields: Sequence[torch.Tensor]
    ) -> _Message:
        """Fill ``response``'s repeated Tensor ``fields`` in place (no copy of a finished
        message: see ``jacserve.codec.encode_tensor``) once they fit in a message."""
        self._check_size(*fields.values())
        with phases.phase("encode"):  # the codec moves them to CPU
            for field, tensors in fields.items():
                encode_tensors(tensors, name=field, into=getattr(response, field))
        return response

    def _with_metrics(
        self, response: _Message, result: engine.EngineResult, phases: Phases, model: LoadedModel
    ) -> _Message:
        """``response`` with its metrics (measured last, so that the total covers encoding)."""
        response.metrics.CopyFrom(self._wire_metrics(result, phases, model))  # type: ignore[attr-defined]
        return response

    @staticmethod
    def _wire_metrics(
        result: engine.EngineResult, phases: Phases, model: LoadedModel
    ) -> pb.DerivativeMetrics:
        m = result.metrics
        return pb.DerivativeMetrics(
            mode=MODE_TO_WIRE[m.mode],
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
            warnings=[*model.warnings, *m.warnings],
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
            verification=phases.verification,
            threads=torch.get_num_threads(),
            checkpoint_segments=m.checkpoint_segments,
            recompute_seconds=m.recompute_seconds,
        )

    def _product(self, request: Any, deadline: float, *, kind: str) -> Any:
        """A JVP (``kind="jvp"``, vectors are tangents) or VJP (cotangents)."""
        vectors = "tangents" if kind == "jvp" else "cotangents"
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options,
            primals=request.primals, **{vectors: getattr(request, vectors)},
        )  # fmt: skip
        fn = structure.bind(model, fn, method, request, len(t["primals"]))
        structure.check_inputs(model, method, fn, t["primals"])
        count = verify.check_count(request.options.verify_directions)
        check_deadline(deadline)
        result = getattr(engine, kind)(
            fn,
            t["primals"],
            t[vectors],
            wrt=list(request.wrt),
            batched=request.batched,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        if count:
            check = verify.verify_jvp if kind == "jvp" else verify.verify_vjp
            phases.verification = verify.to_wire(
                check(model.module, method.name, t["primals"], list(request.wrt),
                      t[vectors], result.values, count, request.batched,
                      wrap=structure.verification_wrap(fn))
            )  # fmt: skip
        response = (pb.JvpResponse if kind == "jvp" else pb.VjpResponse)(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output)
        )
        self._encode(phases, response, outputs=result.outputs, **{kind: result.values})
        return self._with_metrics(response, result, phases, model)

    def _Jvp(self, request: pb.JvpRequest, deadline: float) -> pb.JvpResponse:
        return self._product(request, deadline, kind="jvp")

    def _Vjp(self, request: pb.VjpRequest, deadline: float) -> pb.VjpResponse:
        return self._product(request, deadline, kind="vjp")

    def _compute_jacobian(
        self, request: pb.JacobianRequest, deadline: float
    ) -> tuple[LoadedModel, engine.EngineResult, Phases, tuple[torch.Tensor, ...], Any]:
        """Load, check and run a Jacobian request: (model, result, phases, decoded inputs,
        the function the engine called)."""
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        inputs = t["inputs"]
        fn = structure.bind(model, fn, method, request, len(inputs))
        structure.check_inputs(model, method, fn, inputs, batched=request.batched)
        mode = mode_from_wire(request.mode)
        options = request.options
        if options.max_memory_bytes < 0 or options.chunk_size < 0:
            raise InvalidArgument(
                "options: max_memory_bytes and chunk_size must be >= 0 (0 = server default); "
                f"got {options.max_memory_bytes} and {options.chunk_size}"
            )
        budget = options.max_memory_bytes or self._settings.max_memory_bytes
        count = verify.check_count(
            options.verify_directions, batched=request.batched, windowed=request.HasField("passes")
        )
        check_deadline(deadline)
        result = engine.jacobian(
            fn,
            inputs,
            wrt=list(request.wrt),
            mode=mode,
            batched=request.batched,
            chunk_size=options.chunk_size or None,
            max_memory_bytes=budget or None,
            max_elements=self._settings.max_tensor_elements,
            cache=model.derivative_cache,
            compiled=None if isinstance(fn, structure.Structured) else model.compiled_programs,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
            passes=(
                (request.passes.start, request.passes.stop) if request.HasField("passes") else None
            ),
            graph=(
                model.graph_module
                if method.name == "forward" and not isinstance(fn, structure.Structured)
                else None
            ),
        )
        if count:
            phases.verification = verify.to_wire(
                verify.verify_jacobian(model.module, method.name, inputs, list(request.wrt),
                                       result.outputs, result.values, count,
                                       wrap=structure.verification_wrap(fn))
            )  # fmt: skip
        return model, result, phases, inputs, fn

    def _Jacobian(self, request: pb.JacobianRequest, deadline: float) -> pb.JacobianResponse:
        model, result, phases, _, fn = self._compute_jacobian(request, deadline)
        response = pb.JacobianResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output)
        )
        self._encode(phases, response, outputs=result.outputs, jacobian=result.values)
        return self._with_metrics(response, result, phases, model)

    def _ParameterGradients(
        self, request: pb.ParameterGradientsRequest, deadline: float
    ) -> pb.ParameterGradientsResponse:
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options,
            inputs=request.inputs, cotangents=request.cotangents,
        )  # fmt: skip
        fn = structure.bind(model, fn, method, request, len(t["inputs"]))
        structure.check_inputs(model, method, fn, t["inputs"])
        count = verify.check_count(request.options.verify_directions)
        parameters = model.parameters
        if request.parameters:
            unknown = [n for n in request.parameters if n not in parameters]
            if unknown:
                raise InvalidArgument(
                    f"parameters: unknown name(s) {unknown}; the model's parameters are "
                    f"{list(parameters)[:20]}"
                )
            parameters = {n: parameters[n] for n in request.parameters}
        check_deadline(deadline)
        result = engine.parameter_gradients(
            fn,
            t["inputs"],
            parameters,
            cotangents=t["cotangents"] or None,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        if count:
            phases.verification = verify.to_wire(
                verify.verify_gradients(model.module, method.name, t["inputs"], result.names,
                                        result.values, t["cotangents"], count,
                                        wrap=structure.verification_wrap(fn))
            )  # fmt: skip
        response = pb.ParameterGradientsResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output)
        )
        self._check_size(result.outputs, result.values)
        self._encode(phases, response, outputs=result.outputs)
        with phases.phase("encode"):
            for name, value in zip(result.names, result.values, strict=True):
                encode_tensor(value, name=name, into=response.gradients.add(name=name).tensor)
        return self._with_metrics(response, result, phases, model)
