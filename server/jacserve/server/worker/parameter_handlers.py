"""Parameter Jacobians and Fisher information a worker answers
(:class:`ParameterHandlers`, a part of the worker's handlers): ``ParameterJacobian`` and
``FisherInformation`` (see NOTE: [Parameter Jacobians without functional_call] in
``jacserve.server.engine.parameter_jacobian`` and NOTE: [Fisher information] in
``jacserve.server.engine.fisher``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jacserve.codec import TensorCodecError, decode_tensor, encode_tensor
from jacserve.server import engine
from jacserve.server.engine._function import resolve_wrt
from jacserve.server.engine.fisher import check_noise, fisher_information
from jacserve.server.engine.parameter_jacobian import parameter_jacobian
from jacserve.server.errors import InvalidArgument, Reason, ResourceExhausted
from jacserve.server.registry import LoadedModel
from jacserve.server.worker import structure
from jacserve.server.worker.phases import Phases, check_deadline
from jacserve.server.worker.wire_modes import mode_from_wire
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["ParameterHandlers"]


def select_parameters(model: LoadedModel, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named floating parameters of ``model`` (all of them when ``names`` is empty).

    Raises:
        InvalidArgument: an unknown or repeated name (the message lists the model's
            parameters), or a parameter that is not floating-point.
    """
    available = model.parameters
    if not names:
        return dict(available)
    if len(set(names)) != len(names):
        raise InvalidArgument(
            f"parameters: each name at most once; got {list(names)}", field="parameters"
        )
    integral = {n for n, p in model.module.named_parameters() if not p.is_floating_point()}
    refused = [n for n in names if n in integral]
    if refused:
        raise InvalidArgument(
            f"parameters: {refused} are not floating-point and cannot be differentiated",
            field="parameters",
        )
    unknown = [n for n in names if n not in available]
    if unknown:
        listed = list(available)
        raise InvalidArgument(
            f"parameters: unknown name(s) {unknown}; the model's parameters are "
            f"{listed[:50]}" + (f" (and {len(listed) - 50} more)" if len(listed) > 50 else ""),
            field="parameters",
        )
    return {n: available[n] for n in names}


def _rows(result: engine.EngineResult, width: int) -> torch.Tensor:
    """The blocks [i][j] of an (unbatched) Jacobian as one ``[M, N]`` tensor."""
    rows = []
    for i, out in enumerate(result.outputs):
        blocks = result.values[i * width : (i + 1) * width]
        rows.append(torch.cat([b.reshape(out.numel(), -1) for b in blocks], 1))
    return torch.cat(rows, 0)


class ParameterHandlers:
    """Mixed into ``DerivativeHandlers``: uses its ``_prepare``, ``_encode``,
    ``_with_metrics``, ``_check_size`` and ``_settings``."""

    _prepare: Any
    _encode: Any
    _with_metrics: Any
    _check_size: Any
    _settings: Any

    def _ParameterJacobian(
        self, request: pb.ParameterJacobianRequest, deadline: float
    ) -> pb.ParameterJacobianResponse:
        mode = mode_from_wire(request.mode)
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        fn = structure.bind(model, fn, method, request, len(t["inputs"]))
        structure.check_inputs(model, method, fn, t["inputs"])
        parameters = select_parameters(model, list(request.parameters))
        check_deadline(deadline)
        result = parameter_jacobian(
            fn,
            t["inputs"],
            parameters,
            mode=mode,  # type: ignore[arg-type]
            max_elements=self._settings.max_tensor_elements,
            memory_meter=self._settings.memory_meter,
            method=structure.label(fn, method),
        )
        check_deadline(deadline)
        response = pb.ParameterJacobianResponse(
            names=list(result.names),
            **structure.output_fields(fn, len(result.outputs), result.tuple_output),
        )
        self._encode(phases, response, outputs=result.outputs, jacobian=result.values)
        return self._with_metrics(response, result, phases, model)

    def _FisherInformation(
        self, request: pb.FisherInformationRequest, deadline: float
    ) -> pb.FisherInformationResponse:
        if request.wrt and request.parameters:
            raise InvalidArgument(
                "set parameters (names) or wrt (input indices), not both", field="wrt"
            )
        std, _ = check_noise(request.noise_std, None, 0)
        phases = Phases()
        model, fn, method, t = self._prepare(
            phases, request.function, request.options, inputs=request.inputs
        )
        inputs = t["inputs"]
        fn = structure.bind(model, fn, method, request, len(inputs))
        structure.check_inputs(model, method, fn, inputs)
        limit = self._settings.max_tensor_elements
        covariance = None
        if request.HasField("noise_covariance"):
            try:
                covariance = decode_tensor(
                    request.noise_covariance, name="noise_covariance", max_elements=limit
                )
            except TensorCodecError as exc:
                raise InvalidArgument(
                    str(exc), reason=Reason.INVALID_TENSOR, field="noise_covariance"
                ) from None
        label = structure.label(fn, method)
        if request.wrt:
            wrt = resolve_wrt(inputs, list(request.wrt))
            shapes = [(f"input[{k}]", tuple(inputs[k].shape)) for k in wrt]
        else:
            parameters = select_parameters(model, list(request.parameters))
            shapes = [(n, tuple(p.shape)) for n, p in parameters.items()]
        size = sum(torch.Size(s).numel() for _, s in shapes)
        if size * size > limit:
            raise ResourceExhausted(
                f"the Fisher information would have P*P = {size}*{size} = {size * size} "
                f"elements, above the limit of {limit} (--max-tensor-elements); name fewer "
                "parameters (or inputs)",
                reason=Reason.TENSOR_TOO_LARGE,
                elements=size * size,
                limit_elements=limit,
            )
        check_deadline(deadline)
        if request.wrt:
            budget = request.options.max_memory_bytes or self._settings.max_memory_bytes
            result = engine.jacobian(
                fn,
                inputs,
                wrt=list(wrt),
                mode="auto",
                max_memory_bytes=budget or None,
                max_elements=limit,
                cache=model.derivative_cache,
                memory_meter=self._settings.memory_meter,
                method=label,
            )
            flat = _rows(result, len(wrt))
        else:
            result = parameter_jacobian(
                fn,
                inputs,
                parameters,
                max_elements=limit,
                memory_meter=self._settings.memory_meter,
                method=label,
            )
            flat = _rows(result, len(parameters))
        check_deadline(deadline)
        _, factor = check_noise(std, covariance, flat.shape[0])
        slices, start = [], 0
        for name, shape in shapes:
            stop = start + torch.Size(shape).numel()
            slices.append(pb.ParameterSlice(name=name, start=start, stop=stop, shape=shape))
            start = stop
        found = fisher_information(
            flat,
            noise_std=std,
            noise_factor=factor,
            names=[(s.name, s.start, s.stop) for s in slices],
        )
        response = pb.FisherInformationResponse(
            names=slices,
            invertible=found.invertible,
            **structure.output_fields(fn, len(result.outputs), result.tuple_output),
        )
        self._check_size([found.matrix, found.eigenvalues, found.standard_errors])
        self._encode(phases, response, outputs=result.outputs)
        with phases.phase("encode"):
            encode_tensor(found.matrix, name="matrix", into=response.matrix)
            encode_tensor(found.eigenvalues, name="eigenvalues", into=response.eigenvalues)
            encode_tensor(
                found.standard_errors, name="standard_errors", into=response.standard_errors
            )
        response = self._with_metrics(response, result, phases, model)
        response.metrics.warnings.extend(found.warnings)
        return response
