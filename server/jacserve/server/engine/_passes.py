"""Pushing basis vectors through a derivative pass: chunked, vectorized, checked.

A full Jacobian is ``count`` passes of one linear map (a JVP per input element, or a VJP
per output element) applied to the rows of an identity matrix. :class:`Basis` makes any
range of those rows on demand, so a chunk never materializes more than its own rows, and
:func:`run_passes` runs the chunks into preallocated result buffers.

NOTE: [Vectorization check]
vmap relies on a batching rule per op, and a wrong rule gives a wrong Jacobian with no
error: in torch 2.13, vmap over the VJP of torch.cdist (and so torch.func.jacrev) is off
by O(1). Derivative passes are linear in their basis vector, so one unbatched pass on a
random combination w of a chunk's basis rows must equal the same combination of the
vectorized results. The first chunk of each (model, signature, mode) is checked this
way (one extra pass; the result is remembered in the cache when there is one). A
mismatch beyond sqrt(eps) of the results' scale sends the request down the loop path,
which uses no batching rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import vmap

from jacserve.server.engine._function import summarize_error

__all__ = ["Basis", "BasisWindow", "GivenRows", "PassReport", "run_passes"]

Single = Callable[..., tuple[torch.Tensor, ...]]


class Basis:
    """Rows of the identity over the concatenated elements of ``tensors``.

    Row ``k`` is split per tensor and shaped like it; with ``batch`` (a number of points)
    each row is broadcast over a leading batch dimension, since the passes of independent
    points share their basis vectors.

    >>> basis = Basis([torch.zeros(2), torch.zeros(())])
    >>> [r.tolist() for r in basis.rows(1, 3)]
    [[[0.0, 1.0], [0.0, 0.0]], [0.0, 1.0]]
    """

    def __init__(self, tensors: Sequence[torch.Tensor], batch: int | None = None) -> None:
        self._shapes = [tuple(t.shape[1:] if batch is not None else t.shape) for t in tensors]
        self._dtypes = [t.dtype for t in tensors]
        self._device = tensors[0].device if tensors else torch.device("cpu")
        self._batch = batch
        self._sizes = [int(torch.Size(s).numel()) for s in self._shapes]
        self.count = sum(self._sizes)

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Rows ``start..stop-1``: one tensor per input, shape ``(stop-start, [batch], *shape)``."""
        out, offset = [], 0
        for shape, size, dtype in zip(self._shapes, self._sizes, self._dtypes, strict=True):
            block = torch.zeros((stop - start, size), dtype=dtype, device=self._device)
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:  # ones on a diagonal: a strided slice of the flat block, no index tensor
                first = (lo - start) * size + (lo - offset)
                block.view(-1)[first : first + (hi - lo) * (size + 1) : size + 1] = 1
            block = block.reshape((stop - start, *shape))
            if self._batch is not None:
                block = block.unsqueeze(1).expand((stop - start, self._batch, *shape))
            out.append(block)
            offset += size
        return tuple(out)


class BasisWindow:
    """Rows ``start..stop-1`` of a :class:`Basis`, with its interface (a server's share of
    a Jacobian split across servers).

    >>> window = BasisWindow(Basis([torch.zeros(3)]), 1, 3)
    >>> window.count, window.rows(0, 1)[0].tolist()
    (2, [[0.0, 1.0, 0.0]])
    """

    def __init__(self, basis: Basis, start: int, stop: int) -> None:
        self._basis, self._start = basis, start
        self.count = stop - start

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Rows ``start..stop-1`` of the window."""
        return self._basis.rows(self._start + start, self._start + stop)


class GivenRows:
    """Explicit rows (a batch of tangents or cotangents) with the interface of :class:`Basis`.

    >>> GivenRows([torch.arange(6.0).reshape(3, 2)]).rows(1, 2)
    (tensor([[2., 3.]]),)
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self._tensors = tuple(tensors)
        self.count = self._tensors[0].shape[0] if self._tensors else 0

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Rows ``start..stop-1`` of every tensor."""
        return tuple(t[start:stop] for t in self._tensors)


@dataclass
class PassReport:
    """How the passes ran."""

    chunks: int = 0
    vectorized: bool = True
    fallback_reason: str = ""


def _agrees_with_one_unbatched_pass(
    single: Single, basis: tuple[torch.Tensor, ...], stacked: tuple[torch.Tensor, ...]
) -> bool:
    """See NOTE: [Vectorization check]."""
    count = basis[0].shape[0]
    if count < 2:
        return True
    generator = torch.Generator().manual_seed(count)
    weights = torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1

    def combine(batch: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        w = weights.to(device=batch.device, dtype=batch.dtype)
        return torch.tensordot(w.abs() if absolute else w, batch.abs() if absolute else batch, 1)

    checks = single(*(combine(b) for b in basis))
    for check, batch in zip(checks, stacked, strict=True):
        expected = combine(batch)
        scale = combine(batch, absolute=True)
        tolerance = torch.finfo(batch.dtype).eps ** 0.5
        finite = torch.isfinite(expected) & torch.isfinite(check)
        error = (check - expected).abs()
        if bool((error > tolerance * (scale + 1e-30))[finite].any()):
            return False
    return True


def run_passes(
    single: Single,
    basis: Basis | BasisWindow | GivenRows,
    *,
    chunk_size: int,
    check: bool,
    vectorize: bool = True,
    reraise: Callable[[BaseException], bool] = lambda exc: False,
) -> tuple[tuple[torch.Tensor, ...], PassReport]:
    """Apply ``single`` to every basis row, ``chunk_size`` rows per vectorized call.

    Args:
        single: the pass; takes one row per basis tensor, returns a tuple of tensors.
        basis: the rows to push through.
        chunk_size: rows per vmap call (``>= 1``).
        check: verify the first vectorized chunk against an unbatched pass.
        vectorize: ``False`` runs the loop from the start.
        reraise: errors for which falling back to a loop cannot help (raised as they are).

    Returns:
        One tensor per output of ``single`` with a leading dimension of ``basis.count``,
        and a :class:`PassReport`.
    """
    report = PassReport(vectorized=vectorize)
    results: list[torch.Tensor] | None = None
    start = 0
    while start < basis.count:
        stop = min(basis.count, start + chunk_size)
        rows = basis.rows(start, stop)
        part = None
        if report.vectorized:
            try:
                part = vmap(single)(*rows)
            except Exception as exc:
                if reraise(exc):
                    raise
                report.vectorized = False
                report.fallback_reason = (
                    f"vmap failed ({type(exc).__name__}: {summarize_error(exc)[:200]}); "
                    "computed the passes one at a time"
                )
            else:
                if check and start == 0 and not _agrees_with_one_unbatched_pass(single, rows, part):
                    report.vectorized = False
                    report.fallback_reason = (
                        "the vectorized passes disagreed with an unbatched check pass (a "
                        "batching-rule bug in torch for an op of this model); computed the "
                        "passes one at a time"
                    )
                    part = None
        if part is None:
            singles = [single(*(r[k] for r in rows)) for k in range(stop - start)]
            part = tuple(torch.stack(pieces) for pieces in zip(*singles, strict=True))
        if start == 0 and stop == basis.count:  # one chunk: no copy into a buffer
            results = [piece.contiguous() for piece in part]
        else:
            if results is None:
                results = [
                    torch.empty((basis.count, *p.shape[1:]), dtype=p.dtype, device=p.device)
                    for p in part
                ]
            for buffer, piece in zip(results, part, strict=True):
                buffer[start:stop] = piece
        report.chunks += 1
        start = stop
    return tuple(results or ()), report
