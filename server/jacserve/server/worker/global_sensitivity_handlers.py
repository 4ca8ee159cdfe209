"""Global sensitivity a worker answers (:class:`GlobalSensitivityHandlers`, a part of the
worker's handlers): ``GlobalSensitivity``, Jacobians at the points of a Sobol' design
folded into DGSM, total-index bounds and active subspaces (see NOTE: [Global sensitivity
from exact derivatives] in ``jacserve.server.engine.global_sensitivity``)."""

from __future__ import annotations

from typing import Any

import torch

from jacserve.codec import TensorCodecError, decode_tensor, encode_tensor
from jacserve.server import engine
from jacserve.server.engine._function import resolve_wrt
from jacserve.server.engine.global_sensitivity import Law, global_sensitivity
from jacserve.server.errors import InvalidArgument, Reason
from jacserve.server.worker import structure
from jacserve.server.worker.phases import Phases, check_deadline
from jacserve.server.worker.wire_modes import mode_from_wire
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["GlobalSensitivityHandlers"]

_MAX_SAMPLES = 1 << 20
_MAX_BOOTSTRAP = 10_000


def _law(message: pb.Distribution, position: int, limit: int) -> Law:
    """The :class:`Law` a wire ``Distribution`` describes."""
    kind = message.WhichOneof("law")
    if kind is None:
        raise InvalidArgument(
            f"distributions[{position}]: set uniform (low, high) or normal (mean, std)",
            field=f"distributions[{position}]",
        )
    law = getattr(message, kind)
    names = ("low", "high") if kind == "uniform" else ("mean", "std")
    tensors = []
    for name in names:
        where = f"distributions[{position}].{kind}.{name}"
        try:
            tensors.append(decode_tensor(getattr(law, name), name=where, max_elements=limit))
        except TensorCodecError as exc:
            raise InvalidArgument(str(exc), reason=Reason.INVALID_TENSOR, field=where) from None
    return Law(kind, tensors[0], tensors[1])


def _flat_jacobian(result: engine.EngineResult, width: int, batch: int) -> torch.Tensor:
    """The batched blocks [i][j] of a result as one float64 ``[B, M, N]`` tensor."""
    rows = []
    for i in range(len(result.outputs)):
        blocks = result.values[i * width : (i + 1) * width]
        rows.append(
            torch.cat([b.reshape(batch, result.outputs[i][0].numel(), -1) for b in blocks], 2)
        )
    return torch.cat(rows, 1).double()


class GlobalSensitivityHandlers:
    """Mixed into ``DerivativeHandlers``: uses its ``_prepare``, ``_wire_metrics``,
    ``_check_size`` and ``_settings``."""

    _prepare: Any
    _wire_metrics: Any
    _check_size: Any
    _settings: Any

    def _GlobalSensitivity(self, request: pb.GlobalSensitivityRequest, deadline: float) -> Any:
        samples = request.samples or 1024
        if not 2 <= samples <= _MAX_SAMPLES:
            raise InvalidArgument(
                f"samples must be in 2..{_MAX_SAMPLES} (0: 1024); got {request.samples}",
                field="samples",
            )
        if not -1 <= request.bootstrap <= _MAX_BOOTSTRAP:
            raise InvalidArgument(
                f"bootstrap must be in -1..{_MAX_BOOTSTRAP} (0: 100, -1: none); "
                f"got {request.bootstrap}",
                field="bootstrap",
            )
        mode = mode_from_wire(request.mode)
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        inputs = t["inputs"]
        fn = structure.bind(model, fn, method, request, len(inputs))
        structure.check_inputs(model, method, fn, inputs)
        wrt = resolve_wrt(inputs, list(request.wrt))
        limit = self._settings.max_tensor_elements
        laws = [_law(d, k, limit) for k, d in enumerate(request.distributions)]
        budget = request.options.max_memory_bytes or self._settings.max_memory_bytes
        results: list[engine.EngineResult] = []

        def jacobian_at(points: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            batch = points[0].shape[0]
            result = engine.jacobian(
                fn,
                points,
                wrt=list(wrt),
                mode=mode,  # type: ignore[arg-type]
                batched=True,
                max_memory_bytes=budget or None,
                max_elements=limit,
                cache=model.derivative_cache,
                memory_meter=self._settings.memory_meter,
                method=structure.label(fn, method),
            )
            results.append(result)
            outputs = torch.cat([o.reshape(batch, -1) for o in result.outputs], 1)
            return _flat_jacobian(result, len(wrt), batch), outputs

        bootstrap = {0: 100, -1: 0}.get(request.bootstrap, request.bootstrap)
        found = global_sensitivity(
            jacobian_at,
            inputs,
            wrt,
            laws,
            samples=samples,
            seed=request.seed,
            bootstrap=bootstrap,
            max_batch=8 if budget else 4096,  # a budget bounds a batch's passes, not its points
            on_batch=lambda: check_deadline(deadline),
        )
        tensors = [found.dgsm, found.dgsm_std_error, found.total_index_bound, found.eigenvectors]
        self._check_size(tensors)
        last = results[-1]
        response = pb.GlobalSensitivityResponse(
            dgsm=encode_tensor(found.dgsm),
            dgsm_std_error=encode_tensor(found.dgsm_std_error),
            total_index_bound=encode_tensor(found.total_index_bound),
            output_mean=encode_tensor(found.output_mean),
            output_variance=encode_tensor(found.output_variance),
            active_subspaces=[
                pb.ActiveSubspace(
                    eigenvalues=encode_tensor(found.eigenvalues[k]),
                    eigenvectors=encode_tensor(found.eigenvectors[k].contiguous()),
                    eigenvalue_lower=encode_tensor(found.eigenvalue_lower[k]),
                    eigenvalue_upper=encode_tensor(found.eigenvalue_upper[k]),
                )
                for k in range(found.eigenvalues.shape[0])
            ],
            samples=found.samples,
            output_tree=structure.output_fields(fn, len(last.outputs), last.tuple_output)[
                "output_tree"
            ],
        )
        metrics = self._wire_metrics(last, phases, model)
        metrics.passes = sum(r.metrics.passes for r in results)
        metrics.timing.forward_seconds = sum(r.metrics.forward_seconds for r in results)
        metrics.timing.derivative_seconds = sum(r.metrics.derivative_seconds for r in results)
        metrics.timing.plan_seconds = sum(r.metrics.plan_seconds for r in results)
        metrics.batch_size = found.samples
        metrics.warnings.extend(found.warnings)
        check_deadline(deadline)
        response.metrics.CopyFrom(metrics)
        return response
