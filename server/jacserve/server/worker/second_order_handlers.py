"""The second-order RPCs a worker answers: Hessian-vector (or Gauss–Newton-vector)
products and dense Hessians (:class:`SecondOrderHandlers`, a part of the worker's
handlers)."""

from __future__ import annotations

from typing import Any

from jacserve.server import engine
from jacserve.server.errors import InvalidArgument
from jacserve.server.worker import structure
from jacserve.server.worker.phases import Phases, check_deadline
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["SecondOrderHandlers"]


def _refuse_verification(options: pb.ComputeOptions, rpc: str) -> None:
    if options.verify_directions:
        raise InvalidArgument(
            f"options.verify_directions is not available for {rpc}; verify the gradient "
            "(a VJP of the scalar output) instead"
        )


class SecondOrderHandlers:
    """Mixed into ``DerivativeHandlers``: uses its ``_prepare``, ``_encode``,
    ``_with_metrics``, ``_wire_metrics``, ``_compute_jacobian`` and ``_settings``."""

    _prepare: Any
    _encode: Any
    _with_metrics: Any
    _wire_metrics: Any
    _compute_jacobian: Any
    _settings: Any

    def _Hvp(self, request: pb.HvpRequest, deadline: float) -> pb.HvpResponse:
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options,
            inputs=request.inputs, vectors=request.vectors,
        )  # fmt: skip
        fn = structure.bind(model, fn, method, request, len(t["inputs"]))
        structure.check_inputs(model, method, fn, t["inputs"])
        _refuse_verification(request.options, "Hvp")
        check_deadline(deadline)
        product = (
            engine.gauss_newton_vector_products
            if request.gauss_newton
            else engine.hessian_vector_products
        )
        result = product(
            fn,
            t["inputs"],
            t["vectors"],
            wrt=list(request.wrt),
            batched=request.batched,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        response = pb.HvpResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output)
        )
        self._encode(phases, response, outputs=result.outputs, hvp=result.values)
        return self._with_metrics(response, result, phases, model)

    def _Hessian(self, request: pb.HessianRequest, deadline: float) -> pb.HessianResponse:
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        fn = structure.bind(model, fn, method, request, len(t["inputs"]))
        structure.check_inputs(model, method, fn, t["inputs"])
        _refuse_verification(request.options, "Hessian")
        if request.options.chunk_size < 0:
            raise InvalidArgument(
                f"options.chunk_size must be >= 0; got {request.options.chunk_size}"
            )
        check_deadline(deadline)
        result = engine.hessian(
            fn,
            t["inputs"],
            wrt=list(request.wrt),
            chunk_size=request.options.chunk_size or None,
            max_elements=self._settings.max_tensor_elements,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        response = pb.HessianResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output)
        )
        self._encode(phases, response, outputs=result.outputs, hessian=result.values)
        return self._with_metrics(response, result, phases, model)
