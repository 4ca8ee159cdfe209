"""Fisher information of a model's parameters (or inputs) from its Jacobian.

NOTE: [Fisher information]
For outputs y = f(θ) + ε with Gaussian noise ε ~ N(0, Σ), the Fisher information of θ is
F = Jᵀ Σ⁻¹ J, computed in float64 with a Cholesky factor L of Σ (F = (L⁻¹J)ᵀ(L⁻¹J), so
F is symmetric positive semi-definite by construction). F is declared invertible when
its smallest eigenvalue exceeds :data:`RCOND` (1e-12) times its largest (and the largest
is positive): below that, the directions of the smallest eigenvalues cannot be told
apart by the data in float64, the standard errors √diag F⁻¹ are NaN and a warning names
the parameters of the unidentifiable directions.

>>> j = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
>>> f = fisher_information(j, noise_std=0.5)
>>> f.matrix
tensor([[ 8.,  4.],
        [ 4., 20.]], dtype=torch.float64)
>>> f.invertible, [round(v, 4) for v in f.standard_errors.tolist()]
(True, [0.3727, 0.2357])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from jacserve.server.errors import InvalidArgument

__all__ = ["RCOND", "Fisher", "check_noise", "fisher_information"]

RCOND = 1e-12
"""F is invertible when its smallest eigenvalue is above ``RCOND`` × its largest."""


@dataclass(frozen=True)
class Fisher:
    """F = Jᵀ Σ⁻¹ J (float64 ``[P, P]``), its eigenvalues (largest first), √diag F⁻¹
    (NaN unless invertible) and warnings."""

    matrix: torch.Tensor
    eigenvalues: torch.Tensor
    standard_errors: torch.Tensor
    invertible: bool
    warnings: tuple[str, ...] = field(default=())


def check_noise(
    noise_std: float, noise_covariance: torch.Tensor | None, m: int
) -> tuple[float, torch.Tensor | None]:
    """The noise standard deviation (0 → 1) and the Cholesky factor of Σ, validated.

    Raises:
        InvalidArgument: ``noise_std`` negative or not finite; ``noise_covariance`` not
            ``[M, M]``, not finite, not symmetric or not positive definite.

    >>> check_noise(0.0, None, 3)
    (1.0, None)
    >>> check_noise(1.0, torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    jacserve.server.errors.InvalidArgument: noise_covariance: not positive definite ...
    """
    if not math.isfinite(noise_std) or noise_std < 0:
        raise InvalidArgument(
            f"noise_std must be > 0 and finite (0 means 1); got {noise_std}", field="noise_std"
        )
    std = noise_std or 1.0
    if noise_covariance is None:
        return std, None
    sigma = noise_covariance.to(torch.float64)
    if sigma.shape != (m, m):
        raise InvalidArgument(
            f"noise_covariance: expected shape [{m}, {m}] (M = output elements); got "
            f"{list(sigma.shape)}",
            field="noise_covariance",
        )
    if not bool(torch.isfinite(sigma).all()):
        raise InvalidArgument("noise_covariance: not finite", field="noise_covariance")
    scale = float(sigma.abs().max()) if m else 0.0
    if not torch.allclose(sigma, sigma.T, rtol=1e-10, atol=1e-12 * scale):
        raise InvalidArgument("noise_covariance: not symmetric", field="noise_covariance")
    factor, info = torch.linalg.cholesky_ex(sigma)
    if int(info) != 0:
        raise InvalidArgument(
            "noise_covariance: not positive definite (its Cholesky factorization failed at "
            f"column {int(info) - 1})",
            field="noise_covariance",
        )
    return std, factor


def fisher_information(
    jacobian: torch.Tensor,
    *,
    noise_std: float = 1.0,
    noise_factor: torch.Tensor | None = None,
    names: Sequence[tuple[str, int, int]] = (),
) -> Fisher:
    """F = Jᵀ Σ⁻¹ J from an ``[M, P]`` Jacobian (see NOTE: [Fisher information]).

    Args:
        jacobian: ``[M, P]``.
        noise_std: Σ = noise_std² I when ``noise_factor`` is None.
        noise_factor: the lower Cholesky factor L of Σ (from :func:`check_noise`).
        names: (name, start, stop) per parameter, for the warning of a singular F.
    """
    j = jacobian.to(torch.float64)
    if noise_factor is not None:
        whitened = torch.linalg.solve_triangular(noise_factor.to(j.device), j, upper=False)
    else:
        whitened = j / noise_std
    matrix = whitened.T @ whitened
    matrix = (matrix + matrix.T) / 2
    p = matrix.shape[0]
    if p == 0:
        empty = matrix.new_zeros(0)
        return Fisher(matrix, empty, empty, True)
    values, vectors = torch.linalg.eigh(matrix)
    values, vectors = values.flip(0), vectors.flip(1)
    largest = float(values[0])
    invertible = largest > 0 and float(values[-1]) > RCOND * largest
    if invertible:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(matrix))
        errors = torch.sqrt(torch.diagonal(inverse).clamp_min(0))
        return Fisher(matrix, values, errors, True)
    errors = torch.full((p,), math.nan, dtype=torch.float64, device=matrix.device)
    null = vectors[:, values <= RCOND * max(largest, 0.0)]
    return Fisher(matrix, values, errors, False, (_singular_warning(values, null, names),))


def _singular_warning(
    values: torch.Tensor, null: torch.Tensor, names: Sequence[tuple[str, int, int]]
) -> str:
    """Which parameters the unidentifiable directions (columns of ``null``) involve."""
    weight = (null**2).sum(1)
    involved = [name for name, start, stop in names if float(weight[start:stop].sum()) > 1e-6] or [
        f"element {int(k)}" for k in torch.nonzero(weight > 1e-6).flatten()[:10]
    ]
    return (
        f"the Fisher information is singular: {null.shape[1]} of {values.numel()} "
        f"eigenvalue(s) are at most {RCOND:g} × the largest ({float(values[0]):.3g}), so "
        "standard errors are NaN; the data cannot identify the direction(s) involving "
        + ", ".join(involved[:10])
        + (" …" if len(involved) > 10 else "")
    )
