"""Sensitivity summaries of a Jacobian: elasticities, norms, and the inputs that matter.

The raw entry ``∂y_i/∂x_j`` depends on units; the elasticity ``(x_j / y_i)·∂y_i/∂x_j``
is the relative change of ``y_i`` per relative change of ``x_j`` (a 1 % change in x_j
moves y_i by about E_ij %), so inputs measured in different units can be ranked against
each other. Elasticities are undefined where ``y_i = 0`` (NaN there, skipped by the
norms, and counted in a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from jacserve.server.engine._layout import blocks_matrix, flat64

__all__ = ["RankedInput", "SensitivitySummary", "summarize"]


@dataclass(frozen=True)
class RankedInput:
    """An input element: its argument position, flat index in it, and score."""

    input: int
    element: int
    score: float


@dataclass(frozen=True)
class SensitivitySummary:
    """Elasticities ``[M, N]`` and norms per input (``[N]``) and per output (``[M]``)."""

    elasticities: torch.Tensor
    input_norms: torch.Tensor
    input_elasticity_norms: torch.Tensor
    output_norms: torch.Tensor
    output_elasticity_norms: torch.Tensor
    top_inputs: tuple[RankedInput, ...]
    undefined_outputs: int  # outputs equal to 0, whose elasticities are NaN


def _nan_norm(matrix: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.nan_to_num(matrix, nan=0.0).norm(dim=dim)


def summarize(
    blocks: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    top_k: int,
) -> SensitivitySummary:
    """Summarize the Jacobian ``blocks`` (as :func:`jacobian` returns them) at ``inputs``.

    >>> x = torch.tensor([1.0, 10.0])
    >>> y = torch.stack([x[0] * x[1]])          # y = x0·x1: both elasticities are 1
    >>> s = summarize([torch.tensor([[10.0, 1.0]])], [y], [x], [0], top_k=2)
    >>> s.elasticities.tolist(), [r.element for r in s.top_inputs]
    ([[1.0, 1.0]], [0, 1])
    """
    width = len(wrt)
    jacobian = blocks_matrix(blocks, outputs, width)
    x = flat64([inputs[j] for j in wrt])
    y = flat64(outputs)
    zero = y == 0
    elasticities = jacobian * x[None, :] / torch.where(zero, torch.nan, y)[:, None]
    input_scores = _nan_norm(elasticities, 0)
    owners = [(j, e) for j in wrt for e in range(inputs[j].numel())]
    order = torch.argsort(input_scores, descending=True, stable=True)[: max(0, top_k)]
    top = tuple(
        RankedInput(owners[k][0], owners[k][1], float(input_scores[k])) for k in order.tolist()
    )
    return SensitivitySummary(
        elasticities=elasticities,
        input_norms=jacobian.norm(dim=0),
        input_elasticity_norms=input_scores,
        output_norms=jacobian.norm(dim=1),
        output_elasticity_norms=torch.where(zero, torch.nan, _nan_norm(elasticities, 1)),
        top_inputs=top,
        undefined_outputs=int(zero.sum()),
    )
