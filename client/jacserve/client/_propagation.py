"""Requests and results of first-order uncertainty propagation (shared by both clients):
``PropagateUncertainty`` calls and their :class:`PropagationResult`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jacserve.client._analysis import _outputs, _with_inputs
from jacserve.client._calls import Prepared
from jacserve.client._results import DerivativeMetrics, Tensor
from jacserve.client._structure import call_inputs, example_point
from jacserve.codec import decode_tensor, encode_tensor, is_torch_tensor
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["PropagationResult", "prepare_propagate_uncertainty"]


@dataclass(frozen=True)
class PropagationResult:
    """The outputs' first-order uncertainty when the differentiated inputs have a given
    covariance Σ (N = their elements, ``input_names``; M = the output's elements,
    ``output_names``; each flattened and concatenated in order):

    - ``mean``: the output at the inputs (the first-order mean), in the method's output
      structure (a tensor, a tuple or a dict, like other results' ``output``);
    - ``covariance`` ``[M, M]`` float64: J Σ Jᵀ;
    - ``std`` ``[M]`` float64: the square roots of its diagonal;
    - ``method``: ``"jacobian"`` (J formed, then J Σ Jᵀ) or ``"matrix-free"`` (one
      forward-mode pass per column of a factor F of Σ = F Fᵀ, as many as Σ's rank: no
      M × N Jacobian); ``metrics.mode_reason`` says why.
    """

    mean: Any
    covariance: Tensor
    std: Tensor
    method: str
    metrics: DerivativeMetrics
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


def _covariance(value: Any, n: int, names: Sequence[str]) -> Any:
    """``value`` checked as the [n, n] covariance of the differentiated elements: a torch
    tensor, else a NumPy array (nested lists become float64 arrays).

    Raises:
        TypeError: not a real number type.
        ValueError: not a square [n, n] matrix, or entries that are not finite.

    >>> _covariance([[1.0, 0.0], [0.0, 2.0]], 2, ["0"]).dtype
    dtype('float64')
    """
    if not is_torch_tensor(value):
        value = np.asarray(value, dtype=np.float64 if isinstance(value, list) else None)
    shape = tuple(value.shape)
    torch_value = is_torch_tensor(value)
    if torch_value:
        numeric = not value.is_complex() and str(value.dtype) != "torch.bool"
    else:
        numeric = value.dtype != np.bool_ and (
            np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
        )
    if not numeric:
        raise TypeError(f"covariance: expected a real-valued matrix; got dtype {value.dtype}")
    where = ", ".join(names)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(
            f"covariance: expected a square [N, N] matrix with N = {n} (the elements of "
            f"the differentiated inputs {where}, flattened in order); got shape {list(shape)}"
        )
    if shape[0] != n:
        raise ValueError(
            f"covariance: expected shape [{n}, {n}] (the differentiated inputs {where} have "
            f"{n} elements; choose them with wrt); got {list(shape)}"
        )
    finite = bool(value.isfinite().all()) if torch_value else bool(np.isfinite(value).all())
    if not finite:
        raise ValueError("covariance: expected finite entries; got NaN or infinite ones")
    return value


def prepare_propagate_uncertainty(
    inputs: Any,
    covariance: Any,
    *,
    wrt: Sequence[int] | None = None,
    device: str = "",
) -> Prepared[PropagationResult]:
    """A ``PropagateUncertainty`` call (arguments as
    :meth:`jacserve.client.Client.propagate_uncertainty`).

    Raises:
        TypeError: a covariance that is not a real-valued matrix.
        ValueError: a covariance that is not [N, N] over the N differentiated elements,
            or not finite (symmetry and positive semi-definiteness are the server's to
            check).

    >>> import numpy as np
    >>> prepared = prepare_propagate_uncertainty((np.zeros(2), np.ones(3)), np.eye(3), wrt=[1])
    >>> prepared.rpc, list(prepared.request.covariance.shape), list(prepared.request.wrt)
    ('PropagateUncertainty', [3, 3], [1])
    """
    call = call_inputs(inputs, wrt)
    n = sum(int(np.prod(call.leaves[j].shape)) for j in call.wrt)
    checked = _covariance(covariance, n, call.input_names)
    request = _with_inputs(
        pb.PropagateUncertaintyRequest(
            covariance=encode_tensor(checked, name="covariance"),
            options=pb.ComputeOptions(device=device),
        ),
        call,
    )

    def parse(response: pb.PropagateUncertaintyResponse) -> PropagationResult:
        mean, output_names = _outputs(response, call.numpy)
        return PropagationResult(
            mean=mean,
            covariance=decode_tensor(response.covariance, name="covariance", numpy=call.numpy),
            std=decode_tensor(response.std, name="std", numpy=call.numpy),
            method=response.method,
            metrics=DerivativeMetrics.from_wire(response.metrics),
            input_names=call.input_names,
            output_names=output_names,
        )

    return Prepared("PropagateUncertainty", request, parse, example_point(inputs, batched=False))
