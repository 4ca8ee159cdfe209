"""The analysis RPCs a worker answers: sensitivity summaries, top singular triplets and
sparse Jacobians (:class:`AnalysisHandlers`, a part of the worker's handlers)."""

from __future__ import annotations

from typing import Any

import torch

from jacserve.codec import encode_tensor
from jacserve.server.engine._function import resolve_wrt
from jacserve.server.engine.sensitivity import summarize
from jacserve.server.engine.sparse import sparse_jacobian
from jacserve.server.engine.spectral import top_singular
from jacserve.server.errors import InvalidArgument
from jacserve.server.worker import structure
from jacserve.server.worker.phases import Phases, check_deadline
from jacserve.server.worker.wire_modes import mode_from_wire
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["AnalysisHandlers"]


def _tensor(t: torch.Tensor) -> pb.Tensor:
    return encode_tensor(t.contiguous())


class AnalysisHandlers:
    """Mixed into ``DerivativeHandlers``: uses its ``_prepare``, ``_encode``,
    ``_check_size``, ``_with_metrics``, ``_wire_metrics``, ``_compute_jacobian`` and
    ``_settings``."""

    _prepare: Any
    _encode: Any
    _check_size: Any
    _with_metrics: Any
    _wire_metrics: Any
    _compute_jacobian: Any
    _settings: Any

    def _Sensitivity(self, request: pb.SensitivityRequest, deadline: float) -> Any:
        if request.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0: 10); got {request.top_k}")
        inner = pb.JacobianRequest(
            function=request.function,
            inputs=request.inputs,
            wrt=request.wrt,
            mode=request.mode,
            options=request.options,
        )
        if request.HasField("input_tree"):
            inner.input_tree.CopyFrom(request.input_tree)
        model, result, phases, inputs, fn = self._compute_jacobian(inner, deadline)
        wrt = resolve_wrt(inputs, list(request.wrt))
        summary = summarize(result.values, result.outputs, inputs, wrt, request.top_k or 10)
        metrics = self._wire_metrics(result, phases, model)
        if summary.undefined_outputs:
            metrics.warnings.append(
                f"{summary.undefined_outputs} output(s) are 0 at this point: their "
                "elasticities are undefined (NaN) and left out of the input scores"
            )
        response = pb.SensitivityResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output),
            elasticities=_tensor(summary.elasticities),
            input_norms=_tensor(summary.input_norms),
            input_elasticity_norms=_tensor(summary.input_elasticity_norms),
            output_norms=_tensor(summary.output_norms),
            output_elasticity_norms=_tensor(summary.output_elasticity_norms),
            top_inputs=[
                pb.RankedInput(input=r.input, element=r.element, score=r.score)
                for r in summary.top_inputs
            ],
            metrics=metrics,
        )
        return self._encode(phases, response, outputs=result.outputs)

    def _TopSingular(self, request: pb.TopSingularRequest, deadline: float) -> Any:

        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        fn = structure.bind(model, fn, method, request, len(t["inputs"]))
        structure.check_inputs(model, method, fn, t["inputs"])
        if request.steps < 0:
            raise InvalidArgument(f"steps must be >= 0 (0: automatic); got {request.steps}")
        check_deadline(deadline)
        result, triplets = top_singular(
            fn,
            t["inputs"],
            request.k,
            wrt=list(request.wrt),
            steps=request.steps,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        response = pb.TopSingularResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output),
            values=_tensor(triplets.values),
            input_directions=_tensor(triplets.input_directions),
            output_directions=_tensor(triplets.output_directions),
            residuals=_tensor(triplets.residuals),
            steps=triplets.steps,
            converged=triplets.converged,
        )
        self._encode(phases, response, outputs=result.outputs)
        return self._with_metrics(response, result, phases, model)

    def _SparseJacobian(self, request: pb.SparseJacobianRequest, deadline: float) -> Any:

        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        fn = structure.bind(model, fn, method, request, len(t["inputs"]))
        structure.check_inputs(model, method, fn, t["inputs"])
        mode = mode_from_wire(request.mode)
        if request.probes < 0:
            raise InvalidArgument(f"probes must be >= 0 (0: 3); got {request.probes}")
        pattern = None
        if request.HasField("pattern"):
            given = request.pattern
            pattern = (
                torch.tensor(list(given.row_indices), dtype=torch.int64),
                torch.tensor(list(given.col_indices), dtype=torch.int64),
            )
        check_deadline(deadline)
        result, sparse = sparse_jacobian(
            fn,
            t["inputs"],
            wrt=list(request.wrt),
            mode=mode,
            pattern=pattern,
            probes=request.probes or 3,
            cache=model.derivative_cache,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        declared = (request.pattern.rows, request.pattern.cols)
        if pattern is not None and any(declared) and declared != sparse.shape:
            raise InvalidArgument(
                f"pattern: declared {request.pattern.rows} x {request.pattern.cols}, but the "
                f"Jacobian is {sparse.shape[0]} x {sparse.shape[1]} (outputs by inputs)"
            )
        response = pb.SparseJacobianResponse(
            **structure.output_fields(fn, len(result.outputs), result.tuple_output),
            rows=sparse.shape[0],
            cols=sparse.shape[1],
            row_indices=_tensor(sparse.rows),
            col_indices=_tensor(sparse.cols),
            colors=sparse.colors,
            detected=sparse.detected,
        )
        self._check_size(result.outputs, [sparse.values])
        self._encode(phases, response, outputs=result.outputs)
        with phases.phase("encode"):
            encode_tensor(sparse.values.contiguous(), name="values", into=response.values)
        return self._with_metrics(response, result, phases, model)
