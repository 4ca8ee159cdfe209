"""Requests and results of parameter Jacobians and Fisher information (shared by both
clients): ``ParameterJacobian`` and ``FisherInformation`` calls and their results."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from jacserve.client._analysis import _with_inputs
from jacserve.client._calls import MODES, Prepared, structured_outputs
from jacserve.client._results import DerivativeMetrics, Tensor
from jacserve.client._structure import call_inputs, example_point
from jacserve.codec import decode_tensor, decode_tensors, encode_tensor, encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = [
    "FisherResult",
    "ParameterJacobianResult",
    "ParameterSlice",
    "prepare_fisher_information",
    "prepare_parameter_jacobian",
    "warn_if_singular",
]


class ParameterSlice(NamedTuple):
    """Where a parameter (or an input ``"input[k]"``) lies along the flattened axis of a
    :class:`FisherResult`: rows and columns ``start:stop``, reshaped to ``shape``."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ParameterJacobianResult:
    """The Jacobian of the outputs with respect to the model's named parameters.

    ``jacobian`` maps each parameter name (in the model's order, or the order asked
    for) to its block ``∂output/∂parameter`` of shape ``output.shape + parameter.shape``,
    for a method returning one tensor. For a method returning several tensors (a tuple,
    list or dict), ``jacobian`` has the output's structure with such a dict in place of
    each output tensor: ``jacobian[i][name]`` for a tuple output.
    """

    output: Any
    jacobian: Any
    metrics: DerivativeMetrics


@dataclass(frozen=True)
class FisherResult:
    """Fisher information F = Jᵀ Σ⁻¹ J of the outputs observed with Gaussian noise Σ,
    over P flattened parameter (or input) elements, float64:

    - ``matrix`` ``[P, P]``; ``names``: a :class:`ParameterSlice` per parameter, whose
      ``start:stop`` are its rows and columns;
    - ``eigenvalues`` ``[P]``, largest first: directions with (near) zero eigenvalues
      cannot be identified from the outputs;
    - ``standard_errors`` ``[P]`` = √diag F⁻¹, the Cramér–Rao bound on each element's
      standard deviation, NaN unless ``invertible`` (smallest eigenvalue above 1e-12 ×
      the largest; ``metrics.warnings`` then names the unidentifiable parameters);
    - ``output``: the model's output at the inputs.
    """

    matrix: Tensor
    names: tuple[ParameterSlice, ...]
    eigenvalues: Tensor
    standard_errors: Tensor
    invertible: bool
    metrics: DerivativeMetrics
    output: Any


def warn_if_singular(result: FisherResult, stacklevel: int = 3) -> FisherResult:
    """Warn (``RuntimeWarning``) when the Fisher information is not invertible."""
    if not result.invertible:
        why = [w for w in result.metrics.warnings if "Fisher information is singular" in w]
        warnings.warn(
            why[0] if why else "the Fisher information is singular; standard errors are NaN",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return result


def _request_inputs(request: Any, inputs: Any, wrt: Sequence[int] | None) -> Any:
    """Put the inputs (and with ``wrt`` the input indices) into ``request``."""
    call = call_inputs(inputs, wrt)
    if wrt is not None:
        return _with_inputs(request, call), call
    encode_tensors(call.leaves, name="inputs", into=request.inputs)
    if call.wire_tree is not None:
        request.input_tree.CopyFrom(call.wire_tree)
    return request, call


def prepare_parameter_jacobian(
    inputs: Any,
    *,
    parameters: Sequence[str] | None = None,
    mode: str = "auto",
    device: str = "",
) -> Prepared[ParameterJacobianResult]:
    """A ``ParameterJacobian`` call (arguments as
    :meth:`jacserve.client.Client.parameter_jacobian`).

    >>> prepared = prepare_parameter_jacobian([1.0, 2.0], parameters=["weight"])
    >>> prepared.rpc, list(prepared.request.parameters)
    ('ParameterJacobian', ['weight'])
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected 'auto', 'forward' or 'reverse'; got {mode!r}")
    if isinstance(parameters, str):
        parameters = [parameters]
    request, call = _request_inputs(
        pb.ParameterJacobianRequest(
            parameters=list(parameters or ()),
            mode=MODES[mode],
            options=pb.ComputeOptions(device=device),
        ),
        inputs,
        None,
    )

    def parse(response: pb.ParameterJacobianResponse) -> ParameterJacobianResult:
        outputs = decode_tensors(response.outputs, numpy=call.numpy)
        names = list(response.names)
        blocks = decode_tensors(response.jacobian, numpy=call.numpy)
        per_output = [
            dict(zip(names, blocks[i * len(names) : (i + 1) * len(names)], strict=True))
            for i in range(len(outputs))
        ]
        return ParameterJacobianResult(
            output=structured_outputs(response, outputs),
            jacobian=structured_outputs(response, per_output),
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("ParameterJacobian", request, parse, example_point(inputs, batched=False))


def prepare_fisher_information(
    inputs: Any,
    *,
    noise_std: float = 1.0,
    noise_covariance: Any = None,
    parameters: Sequence[str] | None = None,
    wrt: Sequence[int] | None = None,
    device: str = "",
) -> Prepared[FisherResult]:
    """A ``FisherInformation`` call (arguments as
    :meth:`jacserve.client.Client.fisher_information`).

    >>> prepared = prepare_fisher_information([1.0, 2.0], noise_std=0.5)
    >>> prepared.rpc, prepared.request.noise_std, prepared.request.HasField("noise_covariance")
    ('FisherInformation', 0.5, False)
    """
    if not (isinstance(noise_std, int | float) and math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std must be > 0 and finite; got {noise_std!r}")
    if parameters is not None and wrt is not None:
        raise ValueError("parameters (names) or wrt (input indices), not both")
    if isinstance(parameters, str):
        parameters = [parameters]
    if wrt is not None and not list(wrt):
        raise ValueError("wrt: name at least one input index (or leave it None for parameters)")
    request, call = _request_inputs(
        pb.FisherInformationRequest(
            parameters=list(parameters or ()),
            noise_std=float(noise_std),
            options=pb.ComputeOptions(device=device),
        ),
        inputs,
        wrt,
    )
    if noise_covariance is not None:
        encode_tensor(noise_covariance, name="noise_covariance", into=request.noise_covariance)

    def parse(response: pb.FisherInformationResponse) -> FisherResult:
        def decode(message: pb.Tensor, name: str) -> Any:
            return decode_tensor(message, name=name, numpy=call.numpy)

        return FisherResult(
            matrix=decode(response.matrix, "matrix"),
            names=tuple(
                ParameterSlice(s.name, s.start, s.stop, tuple(s.shape)) for s in response.names
            ),
            eigenvalues=decode(response.eigenvalues, "eigenvalues"),
            standard_errors=decode(response.standard_errors, "standard_errors"),
            invertible=response.invertible,
            metrics=DerivativeMetrics.from_wire(response.metrics),
            output=structured_outputs(response, decode_tensors(response.outputs, numpy=call.numpy)),
        )

    return Prepared("FisherInformation", request, parse, example_point(inputs, batched=False))
