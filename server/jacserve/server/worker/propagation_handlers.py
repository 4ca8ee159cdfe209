"""Uncertainty propagation a worker answers (:class:`PropagationHandlers`, a part of the
worker's handlers): ``PropagateUncertainty``, the first-order covariance J Σ Jᵀ of the
outputs (see NOTE: [Propagating a covariance through exact derivatives] in
``jacserve.server.engine.propagation``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jacserve.codec import TensorCodecError, decode_tensor, encode_tensor
from jacserve.server.engine.propagation import propagate_uncertainty
from jacserve.server.errors import InvalidArgument, Reason
from jacserve.server.worker import structure
from jacserve.server.worker.phases import Phases, check_deadline
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["PropagationHandlers"]


def _placeholders(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The covariance [M, M] and std [M] float64 a response for ``outputs`` will carry
    (M of their elements), not allocated."""
    m = sum(o.numel() for o in outputs)
    return [
        torch.empty((m, m), dtype=torch.float64, device="meta"),
        torch.empty((m,), dtype=torch.float64, device="meta"),
    ]


class PropagationHandlers:
    """Mixed into ``DerivativeHandlers``: uses its ``_prepare``, ``_encode``,
    ``_with_metrics``, ``_check_size`` and ``_settings``."""

    _prepare: Any
    _encode: Any
    _with_metrics: Any
    _check_size: Any
    _settings: Any

    def _PropagateUncertainty(
        self, request: pb.PropagateUncertaintyRequest, deadline: float
    ) -> pb.PropagateUncertaintyResponse:
        if not request.HasField("covariance"):
            raise InvalidArgument(
                "covariance: expected the [N, N] covariance of the differentiated (wrt) "
                "inputs' elements, flattened and concatenated in wrt order; got none",
                field="covariance",
            )
        options = request.options
        if options.max_memory_bytes < 0:
            raise InvalidArgument(
                "options: max_memory_bytes must be >= 0 (0 = server default); "
                f"got {options.max_memory_bytes}"
            )
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, options, inputs=request.inputs
        )
        inputs = t["inputs"]
        fn = structure.bind(model, fn, method, request, len(inputs))
        structure.check_inputs(model, method, fn, inputs)
        limit = self._settings.max_tensor_elements
        with phases.phase("decode"):
            try:
                covariance = decode_tensor(
                    request.covariance, name="covariance", max_elements=limit
                )
            except TensorCodecError as exc:
                raise InvalidArgument(
                    str(exc), reason=Reason.INVALID_TENSOR, field="covariance"
                ) from None
        budget = options.max_memory_bytes or self._settings.max_memory_bytes
        check_deadline(deadline)
        found = propagate_uncertainty(
            fn,
            inputs,
            covariance,
            wrt=list(request.wrt),
            max_memory_bytes=budget or None,
            max_elements=limit,
            cache=model.derivative_cache,
            compiled=None if isinstance(fn, structure.Structured) else model.compiled_programs,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
            on_outputs=lambda outputs: self._check_size(outputs, _placeholders(outputs)),
            on_chunk=lambda: check_deadline(deadline),
        )
        result = found.result
        response = pb.PropagateUncertaintyResponse(
            method=found.method,
            **structure.output_fields(fn, len(result.outputs), result.tuple_output),
        )
        self._encode(phases, response, outputs=result.outputs)
        with phases.phase("encode"):
            encode_tensor(found.covariance, name="covariance", into=response.covariance)
            encode_tensor(found.std, name="std", into=response.std)
        check_deadline(deadline)
        return self._with_metrics(response, result, phases, model)
