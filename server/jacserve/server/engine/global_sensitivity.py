"""Derivative-based global sensitivity: DGSM, Sobol' total-index bounds, active subspaces.

NOTE: [Global sensitivity from exact derivatives]
The varied inputs x (the ``wrt`` inputs, flattened and concatenated: N elements) follow
independent laws, uniform on [a, b] or normal N(μ, σ²), element by element; the other
inputs stay at the given values. A scrambled Sobol' design of S points in [0, 1)^N
(``torch.quasirandom.SobolEngine``, seeded) is mapped through each law's quantile
function, and the Jacobian of the M outputs is taken at every point, in batches whose
Jacobians are folded into running sums and dropped, never all kept:

- ``dgsm`` ν_ij = E[(∂y_i/∂x_j)²], with the standard error √((E[g⁴] − ν²)/S) of an
  i.i.d. sample of that size (conservative for Sobol' points, whose error is smaller);
- ``total_index_bound``: Sobol's total-effect index of x_j for y_i is at most
  (b−a)²·ν_ij/(π²·Var y_i) for a uniform x_j and σ²·ν_ij/Var y_i for a normal one
  (Poincaré inequalities; Lamboni, Iooss, Popelin & Gamboa 2013), with Var y_i, E y_i
  estimated from the same points;
- per output, the active subspace: the eigenpairs of C = E[∇y_i ∇y_iᵀ] (N × N),
  largest first, with percentile bootstrap intervals for the eigenvalues (Constantine
  2015), computed while S·M·N and N are small enough to keep the gradients.

>>> import math
>>> laws = [Law("uniform", torch.zeros(2), torch.ones(2))]
>>> def jac(points):  # y = 3 x0 + x1², so ν = (9, E[4 x1²] = 4/3)
...     (x,) = points
...     return torch.stack([torch.full_like(x[:, 0], 3.0), 2 * x[:, 1]], 1)[:, None], 3 * x[:, :1] + x[:, 1:] ** 2
>>> result = global_sensitivity(jac, [torch.zeros(2)], (0,), laws, samples=4096, seed=0)
>>> [round(v, 3) for v in result.dgsm[0].tolist()]
[9.0, 1.333]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from jacserve.server.errors import InvalidArgument

__all__ = ["GlobalSensitivity", "Law", "global_sensitivity"]

_KEEP_GRADIENTS = 1 << 24  # most S·M·N gradient values kept for the active subspaces
_MAX_SUBSPACE_INPUTS = 2000
_POINTS_BYTES = 64 << 20  # Jacobian bytes of one batch of points
_MAX_BATCH = 4096  # points per batch (one engine call each)
_BATCH_SECONDS = 0.25  # a batch is doubled while it takes less
_TINY = 1e-12


@dataclass(frozen=True)
class Law:
    """The law of one varied input, element by element: ``uniform`` on [first, second)
    or ``normal`` with mean ``first`` and standard deviation ``second``."""

    kind: str
    first: torch.Tensor
    second: torch.Tensor

    def check(self, like: torch.Tensor, position: int) -> Law:
        """This law broadcast to ``like``'s shape, as float64 on the CPU.

        Raises:
            InvalidArgument: an unknown kind, parameters that do not broadcast to the
                input's shape, non-finite ones, high <= low or std <= 0.
        """
        where = f"distributions[{position}]"
        if self.kind not in ("uniform", "normal"):
            raise InvalidArgument(f"{where}: expected uniform or normal; got {self.kind!r}")
        try:
            first, second = (
                t.detach().double().cpu().broadcast_to(like.shape).reshape(-1)
                for t in (self.first, self.second)
            )
        except RuntimeError:
            raise InvalidArgument(
                f"{where}: its parameters (shapes {list(self.first.shape)} and "
                f"{list(self.second.shape)}) must have the varied input's shape "
                f"{list(like.shape)} (or broadcast to it)",
                field=where,
            ) from None
        if not (torch.isfinite(first).all() and torch.isfinite(second).all()):
            raise InvalidArgument(f"{where}: parameters must be finite", field=where)
        if self.kind == "uniform" and not bool((second > first).all()):
            raise InvalidArgument(f"{where}: every high must exceed its low", field=where)
        if self.kind == "normal" and not bool((second > 0).all()):
            raise InvalidArgument(f"{where}: every std must be > 0", field=where)
        return Law(self.kind, first, second)

    def quantile(self, u: torch.Tensor) -> torch.Tensor:
        """Points of this law from uniform ``u`` ``[S, n]`` (flat parameters)."""
        if self.kind == "uniform":
            return self.first + u * (self.second - self.first)
        return self.first + self.second * torch.special.ndtri(u.clamp(_TINY, 1 - _TINY))

    def bound_factor(self) -> torch.Tensor:
        """(b−a)²/π² (uniform) or σ² (normal): the total-index bound is this · ν / Var y."""
        if self.kind == "uniform":
            return (self.second - self.first) ** 2 / math.pi**2
        return self.second**2


@dataclass
class GlobalSensitivity:
    """What :func:`global_sensitivity` returns (shapes: M outputs, N varied elements,
    K = M outputs with subspaces or 0)."""

    dgsm: torch.Tensor  # [M, N]
    dgsm_std_error: torch.Tensor  # [M, N]
    total_index_bound: torch.Tensor  # [M, N]
    output_mean: torch.Tensor  # [M]
    output_variance: torch.Tensor  # [M]
    eigenvalues: torch.Tensor  # [K, N], largest first
    eigenvectors: torch.Tensor  # [K, N, N], column k goes with eigenvalue k
    eigenvalue_lower: torch.Tensor  # [K, N], 95 % bootstrap interval
    eigenvalue_upper: torch.Tensor
    samples: int
    batches: int
    warnings: list[str] = field(default_factory=list)


class _Sums:
    """Running sums over the points, in float64 on the CPU."""

    def __init__(self, m: int, n: int, keep: bool) -> None:
        self.g2, self.g4 = (
            torch.zeros(m, n, dtype=torch.float64),
            torch.zeros(m, n, dtype=torch.float64),
        )
        self.y, self.y2 = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        self.shift: torch.Tensor | None = None  # the first point's outputs (stable variance)
        self.kept: list[torch.Tensor] | None = [] if keep else None
        self.count, self.nonfinite = 0, 0

    def add(self, jac: torch.Tensor, out: torch.Tensor) -> None:
        bad = ~(torch.isfinite(jac).flatten(1).all(1) & torch.isfinite(out).all(1))
        self.nonfinite += int(bad.sum())
        squared = jac * jac
        self.g2 += squared.sum(0)
        self.g4 += (squared * squared).sum(0)
        if self.shift is None:
            self.shift = out[0].clone()
        centred = out - self.shift
        self.y += centred.sum(0)
        self.y2 += (centred * centred).sum(0)
        if self.kept is not None:
            self.kept.append(jac)
        self.count += jac.shape[0]


def global_sensitivity(
    jacobian_at: Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    laws: Sequence[Law],
    *,
    samples: int,
    seed: int,
    bootstrap: int = 100,
    max_batch: int = _MAX_BATCH,
    on_batch: Callable[[], None] = lambda: None,
) -> GlobalSensitivity:
    """Global sensitivity indices of a function from its Jacobians at S design points.

    Args:
        jacobian_at: given the inputs with a leading batch of points (varied ones drawn,
            the others expanded), the float64 Jacobians ``[B, M, N]`` and outputs
            ``[B, M]`` there, flattened (see NOTE: [Global sensitivity from exact
            derivatives]).
        inputs: every input at its given value.
        wrt: the varied inputs (positions in ``inputs``), one law each.
        laws: the varied inputs' laws, in ``wrt`` order.
        samples: S, the design's points (a power of two keeps Sobol's balance).
        seed: the scrambling seed (the same seed gives the same points).
        bootstrap: resamples for the eigenvalue intervals (0: none).
        max_batch: most points per call of ``jacobian_at`` (batches start at 8 and double
            while fast).
        on_batch: called before each batch (a deadline check).

    Raises:
        InvalidArgument: bad laws, ``samples < 2`` or a ``wrt`` without a law.
    """
    if samples < 2:
        raise InvalidArgument(f"samples must be >= 2; got {samples}", field="samples")
    if len(laws) != len(wrt):
        raise InvalidArgument(
            f"expected one distribution per varied input ({len(wrt)}); got {len(laws)}",
            field="distributions",
        )
    flat_laws = [law.check(inputs[i], k) for k, (i, law) in enumerate(zip(wrt, laws, strict=True))]
    sizes = [inputs[i].numel() for i in wrt]
    n = sum(sizes)
    design = torch.quasirandom.SobolEngine(n, scramble=True, seed=seed)
    sums: _Sums | None = None
    batch, drawn, batches = min(samples, 8), 0, 0
    while drawn < samples:
        on_batch()
        take = min(batch, samples - drawn)
        started = time.perf_counter()
        u = design.draw(take, dtype=torch.float64)
        points, offset = list(inputs), 0
        for i, law, size in zip(wrt, flat_laws, sizes, strict=True):
            values = law.quantile(u[:, offset : offset + size])
            points[i] = values.reshape(take, *inputs[i].shape).to(inputs[i].dtype)
            offset += size
        for i, t in enumerate(inputs):
            if i not in wrt:
                points[i] = t.expand(take, *t.shape)
        jac, out = jacobian_at(points)
        if sums is None:
            m = jac.shape[1]
            keep = samples * m * n <= _KEEP_GRADIENTS and n <= _MAX_SUBSPACE_INPUTS
            sums = _Sums(m, n, keep)
        sums.add(jac.double().cpu(), out.double().cpu())
        batch = _next_batch(batch, time.perf_counter() - started, sums.g2.numel(), max_batch)
        drawn, batches = drawn + take, batches + 1
    assert sums is not None
    return _finish(sums, flat_laws, seed, bootstrap, batches)


def _next_batch(batch: int, seconds: float, jacobian_elements: int, limit: int) -> int:
    """Points in the next batch: doubled while a batch takes under a quarter of a second
    (its memory grows with its time), never past ``limit`` points or 64 MiB of Jacobians.

    >>> _next_batch(8, 0.01, 3, 4096), _next_batch(8, 1.0, 3, 4096), _next_batch(8, 0.01, 3, 8)
    (16, 8, 8)
    """
    by_bytes = max(1, _POINTS_BYTES // max(1, jacobian_elements * 8))
    grown = batch * 2 if seconds < _BATCH_SECONDS else batch
    return max(1, min(grown, limit, by_bytes))


def _finish(
    sums: _Sums, laws: Sequence[Law], seed: int, bootstrap: int, batches: int
) -> GlobalSensitivity:
    s = sums.count
    nu = sums.g2 / s
    std_error = ((sums.g4 / s - nu * nu).clamp(min=0) / s).sqrt()
    mean_shifted = sums.y / s
    variance = ((sums.y2 - s * mean_shifted**2) / (s - 1)).clamp(min=0)
    mean = mean_shifted + (sums.shift if sums.shift is not None else 0)
    factor = torch.cat([law.bound_factor() for law in laws])
    bound = factor[None, :] * nu / variance[:, None]
    warnings = []
    if sums.nonfinite:
        warnings.append(
            f"{sums.nonfinite} of {s} points gave non-finite outputs or derivatives: the "
            "indices they touch are NaN or infinite"
        )
    if bool((variance == 0).any()):
        warnings.append(
            f"{int((variance == 0).sum())} output(s) do not vary over the design: their "
            "total-index bounds are undefined (NaN or infinite)"
        )
    m, n = nu.shape
    empty = torch.zeros(0, n, dtype=torch.float64)
    values, vectors, low, high = empty, torch.zeros(0, n, n, dtype=torch.float64), empty, empty
    if sums.kept is not None and sums.nonfinite == 0:
        gradients = torch.cat(sums.kept).transpose(0, 1)  # [M, S, N]
        values, vectors = _eigen(gradients)
        low, high = _bootstrap(gradients, bootstrap, seed)
    else:
        warnings.append(
            "active subspaces were not computed: "
            + (
                "some points gave non-finite derivatives"
                if sums.nonfinite
                else f"{s} points × {m} outputs × {n} inputs is too many gradients to keep"
            )
        )
    return GlobalSensitivity(
        nu, std_error, bound, mean, variance, values, vectors, low, high, s, batches, warnings
    )


def _eigen(gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of C = E[g gᵀ] per output, largest first, each vector's largest entry
    positive (so the answer does not depend on the solver's signs)."""
    c = gradients.transpose(1, 2) @ gradients / gradients.shape[1]
    values, vectors = torch.linalg.eigh(c)
    values, vectors = values.flip(-1).clamp(min=0), vectors.flip(-1)
    biggest = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.gather(vectors, 1, biggest).sign()
    return values, vectors * torch.where(signs == 0, 1.0, signs)


def _bootstrap(
    gradients: torch.Tensor, resamples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """95 % percentile intervals of the eigenvalues over resampled points."""
    m, s, n = gradients.shape
    if resamples <= 0:
        nan = torch.full((m, n), math.nan, dtype=torch.float64)
        return nan, nan
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(resamples):
        pick = torch.randint(s, (s,), generator=generator)
        sample = gradients[:, pick]
        draws.append(torch.linalg.eigvalsh(sample.transpose(1, 2) @ sample / s).flip(-1))
    stacked = torch.stack(draws)  # [R, M, N]
    return stacked.quantile(0.025, dim=0), stacked.quantile(0.975, dim=0)
