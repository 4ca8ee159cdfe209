"""``options.verify_directions``: what each derivative RPC's answer says along a direction,
checked against central finite differences (:mod:`jacserve.server.engine.verification`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from jacserve.server.engine._function import resolve_wrt
from jacserve.server.engine._layout import blocks_matrix, flat64
from jacserve.server.engine.verification import (
    MAX_DIRECTIONS,
    Verification,
    central_differences,
    parameter_differences,
    random_directions,
)
from jacserve.server.errors import InvalidArgument
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["check_count", "to_wire", "verify_jacobian", "verify_jvp", "verify_vjp"]

Tensors = Sequence[torch.Tensor]
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]] | None


def check_count(requested: int, *, batched: bool = False, windowed: bool = False) -> int:
    """The number of directions asked for, validated.

    >>> check_count(3)
    3
    """
    if not 0 <= requested <= MAX_DIRECTIONS:
        raise InvalidArgument(
            f"options.verify_directions must be in 0..{MAX_DIRECTIONS}; got {requested}"
        )
    if requested and (batched or windowed):
        raise InvalidArgument(
            "options.verify_directions: check one point of a batch, or the whole Jacobian "
            "rather than a window of its passes"
        )
    return requested


def verify_jacobian(
    module: torch.nn.Module,
    method: str,
    inputs: Tensors,
    wrt: Sequence[int],
    outputs: Tensors,
    blocks: Tensors,
    count: int,
    *,
    wrap: Wrap = None,
) -> Verification:
    """Check Jacobian blocks ``[i][j]`` (row-major) along ``count`` random directions.

    >>> lin = torch.nn.Linear(3, 2).double()
    >>> x = torch.ones(3, dtype=torch.float64)
    >>> check = verify_jacobian(lin, "forward", [x], [], [lin(x)], [lin.weight], 2)
    >>> check.max_relative_error < 1e-8
    True
    """
    chosen = resolve_wrt(inputs, wrt)
    matrix = blocks_matrix(blocks, outputs, len(chosen))
    directions = random_directions([inputs[j] for j in chosen], count)
    checks = [(direction, matrix @ flat64(direction)) for direction in directions]
    return central_differences(module, method, inputs, chosen, checks, wrap=wrap)


def verify_jvp(
    module: torch.nn.Module,
    method: str,
    inputs: Tensors,
    wrt: Sequence[int],
    tangents: Tensors,
    jvps: Tensors,
    count: int,
    batched: bool,
    *,
    wrap: Wrap = None,
) -> Verification:
    """Check JVPs along their own tangents (the first ``count`` of a batch).

    >>> x, t = torch.ones(2, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    >>> verify_jvp(torch.nn.Tanh(), "forward", [x], [], [t], [t * (1 - x.tanh() ** 2)],
    ...            1, batched=False).max_relative_error < 1e-8
    True
    """
    chosen = resolve_wrt(inputs, wrt)
    checks = []
    for index in range(min(count, tangents[0].shape[0]) if batched else 1):
        tangent = [t[index] if batched else t for t in tangents]
        norm = math.sqrt(sum(float(t.double().square().sum()) for t in tangent)) or 1.0
        direction = tuple(t.double().cpu() / norm for t in tangent)
        answer = flat64([j[index] if batched else j for j in jvps]) / norm
        checks.append((direction, answer))
    return central_differences(module, method, inputs, chosen, checks, wrap=wrap)


def verify_vjp(
    module: torch.nn.Module,
    method: str,
    inputs: Tensors,
    wrt: Sequence[int],
    cotangents: Tensors,
    vjps: Tensors,
    count: int,
    batched: bool,
    *,
    wrap: Wrap = None,
) -> Verification:
    """Check ``uᵀJ`` by ``(uᵀJ)·v`` against ``u·(difference quotient along v)`` for random
    ``v`` (the first cotangent of a batch).

    >>> x, u = torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    >>> verify_vjp(torch.nn.Tanh(), "forward", [x], [], [u], [u * (1 - x.tanh() ** 2)],
    ...            3, batched=False).max_relative_error < 1e-8
    True
    """
    chosen = resolve_wrt(inputs, wrt)
    u = flat64([c[0] if batched else c for c in cotangents])
    answer = [v[0] if batched else v for v in vjps]
    checks = []
    for direction in random_directions([inputs[j] for j in chosen], count):
        dotted = sum(
            float((a.double().cpu() * d).sum()) for a, d in zip(answer, direction, strict=True)
        )
        checks.append((direction, torch.tensor([dotted], dtype=torch.float64)))
    return central_differences(
        module, method, inputs, chosen, checks, project=lambda fd: u @ fd, wrap=wrap
    )


def verify_gradients(
    module: torch.nn.Module,
    method: str,
    inputs: Tensors,
    names: Sequence[str],
    gradients: Tensors,
    cotangents: Tensors,
    count: int,
    *,
    wrap: Wrap = None,
) -> Verification:
    """Check parameter gradients of ``u · output`` along random parameter directions.

    >>> lin = torch.nn.Linear(2, 1).double()
    >>> x = torch.ones(2, dtype=torch.float64)
    >>> grads = [x.reshape(1, 2), torch.ones(1, dtype=torch.float64)]  # d(w·x + b)
    >>> verify_gradients(lin, "forward", [x], ["weight", "bias"], grads, [], 2).max_relative_error < 1e-8
    True
    """
    u = flat64(cotangents) if cotangents else None
    checks = []
    for direction in random_directions(gradients, count):
        dotted = sum(
            float((g.double().cpu() * d).sum()) for g, d in zip(gradients, direction, strict=True)
        )
        checks.append((direction, torch.tensor([dotted], dtype=torch.float64)))
    return parameter_differences(
        module, method, inputs, names, checks,
        project=lambda fd: fd.sum() if u is None else u @ fd, wrap=wrap,
    )  # fmt: skip


def to_wire(check: Verification) -> pb.FiniteDifferenceCheck:
    """The check as it travels in ``DerivativeMetrics.verification``.

    >>> to_wire(Verification((1e-9, 2e-9), "float64", 6e-6)).max_relative_error
    2e-09
    """
    return pb.FiniteDifferenceCheck(
        relative_errors=list(check.relative_errors),
        max_relative_error=check.max_relative_error,
        precision=check.precision,
        step=check.step,
    )
