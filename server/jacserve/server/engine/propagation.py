"""First-order uncertainty propagation: the covariance J Σ Jᵀ of a function's outputs.

NOTE: [Propagating a covariance through exact derivatives]
The differentiated inputs x (the ``wrt`` inputs, flattened and concatenated: N
elements) have covariance Σ [N, N]; to first order the outputs y = f(x) (M elements,
flattened and concatenated) have mean f(x) and covariance J Σ Jᵀ [M, M], J = ∂y/∂x.
Σ is checked (square N × N, finite, symmetric and positive semi-definite, both within
a tolerance τ = 8·N·eps of its dtype times its largest entry) and factored Σ = F Fᵀ:
by Cholesky, F = L and r = N, when that succeeds with every pivot above τ (positive
definite; 20× faster than an eigendecomposition at N = 1000), else from the
eigendecomposition, F [N, r] = V_r·√Λ_r over the r eigenvalues above τ (so a
rank-deficient Σ, inputs that do not vary or vary together, works; an eigenvalue
below −τ is refused). Then either

- ``"jacobian"``: form J (the engine's Jacobian in auto mode: min(N, M) passes, as
  measured best) and J Σ Jᵀ; or
- ``"matrix-free"``: G = J F [M, r] from r Jacobian-vector products with F's columns
  as tangents (batched, in chunks), and G Gᵀ: no M × N Jacobian is formed.

Matrix-free is chosen when r < min(N, M) (fewer passes than any Jacobian) or M > N
(forward passes are then the Jacobian's cheaper way anyway, and only M × r is kept),
else the Jacobian. Products and sums are float64 whatever the model's dtype.

>>> a = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
>>> sigma = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=torch.float64)
>>> found = propagate_uncertainty(lambda x: a @ x, [torch.zeros(2, dtype=torch.float64)], sigma)
>>> found.method, torch.allclose(found.covariance, a @ sigma @ a.T)
('matrix-free', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from jacserve.server.engine._function import (
    BoundMethod,
    Outputs,
    numel,
    resolve_wrt,
    user_code,
)
from jacserve.server.engine._measure import stopwatch
from jacserve.server.engine._run import (
    EngineResult,
    check_floating_outputs,
    count_nonfinite,
    engine_call,
    finish,
)
from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.engine.jacobian import jacobian
from jacserve.server.engine.planner import ModePlan
from jacserve.server.engine.products import jvp
from jacserve.server.errors import InvalidArgument, Reason, ResourceExhausted

__all__ = ["Propagation", "choose_method", "factor_covariance", "propagate_uncertainty"]

_CHUNK_BYTES = 64 << 20  # tangent and JVP bytes of one batch of matrix-free passes
_TOLERANCE_ULPS = 8  # Σ's tolerance: this many eps of its dtype, times N and its scale
_HINT = (
    "Give the covariance of the differentiated (wrt) inputs' elements, flattened and "
    "concatenated in wrt order"
)


@dataclass(frozen=True)
class CovarianceFactor:
    """A checked Σ: ``matrix`` [N, N] float64 (symmetrized), ``factor`` F [N, r] float64
    with F Fᵀ = Σ up to ``tolerance``, ``rank`` r."""

    matrix: torch.Tensor
    factor: torch.Tensor
    rank: int
    tolerance: float


@dataclass(frozen=True)
class Propagation:
    """What :func:`propagate_uncertainty` returns: ``result`` holds the outputs (the
    first-order mean) and the metrics of all the engine calls, summed; ``covariance``
    [M, M] and ``std`` [M] are float64 on the CPU."""

    result: EngineResult
    covariance: torch.Tensor
    std: torch.Tensor
    method: str
    reason: str
    rank: int
    warnings: list[str] = field(default_factory=list)


def factor_covariance(covariance: torch.Tensor, n: int) -> CovarianceFactor:
    """Check ``covariance`` as the covariance of ``n`` elements and factor it Σ = F Fᵀ.

    Raises:
        InvalidArgument: naming ``covariance``: not a square [n, n] matrix, not a number
            type, not finite, not symmetric or not positive semi-definite (within
            8·n·eps of its dtype times its largest entry).

    >>> f = factor_covariance(torch.tensor([[4.0, 2.0], [2.0, 1.0]]), 2)
    >>> f.rank, torch.allclose(f.factor @ f.factor.T, f.matrix)
    (1, True)
    """
    shape = list(covariance.shape)
    if covariance.dim() != 2 or shape[0] != shape[1]:
        raise InvalidArgument(
            f"covariance: expected a square [N, N] matrix with N = {n}; got shape {shape}. "
            + _HINT,
            field="covariance",
        )
    if shape[0] != n:
        raise InvalidArgument(
            f"covariance: expected shape [{n}, {n}] (the differentiated inputs have {n} "
            f"elements); got {shape}. " + _HINT,
            field="covariance",
        )
    if covariance.dtype == torch.bool or covariance.is_complex():
        raise InvalidArgument(
            f"covariance: expected a real floating-point matrix; got dtype "
            f"{str(covariance.dtype).removeprefix('torch.')}",
            field="covariance",
        )
    eps = torch.finfo(covariance.dtype if covariance.is_floating_point() else torch.float64).eps
    sigma = covariance.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(sigma)
    if bool(bad.any()):
        i, j = (int(k) for k in bad.nonzero()[0])
        raise InvalidArgument(
            f"covariance: expected finite entries; got {int(bad.sum())} NaN or infinite "
            f"(the first at [{i}, {j}]: {sigma[i, j].item()})",
            field="covariance",
        )
    scale = float(sigma.abs().max()) if n else 0.0
    tolerance = _TOLERANCE_ULPS * max(n, 1) * eps * scale
    asymmetry = (sigma - sigma.T).abs()
    if n and float(asymmetry.max()) > tolerance:
        i, j = divmod(int(asymmetry.argmax()), n)
        raise InvalidArgument(
            f"covariance: expected a symmetric matrix; got [{i}, {j}] = {sigma[i, j].item():.6g} "
            f"but [{j}, {i}] = {sigma[j, i].item():.6g} (tolerance {tolerance:.3g}). "
            "Symmetrize it, for example (S + S.T) / 2",
            field="covariance",
        )
    sigma = (sigma + sigma.T) / 2
    if n:
        lower, info = torch.linalg.cholesky_ex(sigma)
        if int(info) == 0 and float(lower.diagonal().min()) ** 2 > tolerance:
            return CovarianceFactor(sigma, lower, n, tolerance)  # positive definite: F = L
    values, vectors = torch.linalg.eigh(sigma)
    if n and float(values[0]) < -tolerance:
        raise InvalidArgument(
            "covariance: expected a positive semi-definite matrix; got the eigenvalue "
            f"{float(values[0]):.6g} (tolerance {tolerance:.3g}). A covariance has no "
            "negative eigenvalues: build it as B @ B.T or clip its negative eigenvalues (a "
            "matrix computed in float32 is checked at float32's tolerance when sent as one)",
            field="covariance",
        )
    keep = values > tolerance
    factor = vectors[:, keep] * values[keep].sqrt()
    return CovarianceFactor(sigma, factor, int(keep.sum()), tolerance)


def choose_method(n: int, m: int, rank: int) -> tuple[str, str]:
    """``"matrix-free"`` or ``"jacobian"`` for N inputs, M outputs and Σ of rank r, and why.
    See NOTE: [Propagating a covariance through exact derivatives].

    >>> choose_method(100, 100, 100)[0], choose_method(100, 100, 3)[0], choose_method(10, 1000, 10)[0]
    ('jacobian', 'matrix-free', 'matrix-free')
    """
    if rank < min(n, m):
        return "matrix-free", (
            f"matrix-free: Σ has rank r={rank} < min(N={n}, M={m}): r forward passes "
            "(JVPs of Σ's factor's columns) instead of a Jacobian's min(N, M)"
        )
    if m > n:
        return "matrix-free", (
            f"matrix-free: M={m} outputs > N={n} inputs: r={rank} forward passes "
            "(JVPs of Σ's factor's columns), no M×N Jacobian kept"
        )
    return "jacobian", (
        f"jacobian: Σ has full rank r={rank} and M={m} <= N={n}: the Jacobian (auto mode) "
        "then J Σ Jᵀ"
    )


def propagate_uncertainty(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    covariance: torch.Tensor,
    *,
    wrt: Sequence[int] | None = None,
    max_memory_bytes: int | None = None,
    max_elements: int | None = None,
    cache: DerivativeCache | None = None,
    compiled: CompiledPrograms | None = None,
    memory_meter: str = "rss",
    method: str = "forward",
    strategy: str = "auto",
    on_outputs: Callable[[Outputs], None] = lambda outputs: None,
    on_chunk: Callable[[], None] = lambda: None,
) -> Propagation:
    """The first-order mean and covariance of ``fn``'s outputs when the ``wrt`` inputs
    have covariance ``covariance`` (see NOTE: [Propagating a covariance through exact
    derivatives]).

    Args:
        fn: the model method.
        inputs: one tensor per positional input: the mean of the differentiated ones.
        covariance: Σ [N, N] over the ``wrt`` inputs' elements, flattened and
            concatenated in ``wrt`` order.
        wrt: indices of the inputs that vary; default every floating input.
        max_memory_bytes: the Jacobian's memory budget, and a bound on one batch of
            matrix-free passes' tangents and products.
        max_elements: refuse a Jacobian or an output covariance with more elements.
        cache, compiled, memory_meter: as for :func:`jacobian`.
        method: the method's name, for messages.
        strategy: ``"auto"`` (see the NOTE), or ``"jacobian"`` or ``"matrix-free"`` to
            force one (for benchmarks and tests; the RPC always chooses).
        on_outputs: called with the outputs before any derivative pass (a size check).
        on_chunk: called before each batch of passes (a deadline check).

    Returns:
        :class:`Propagation`: ``result.outputs`` (the mean), ``covariance`` [M, M] and
        ``std`` [M] float64, ``method`` and why (``reason``, also ``result.metrics.mode_reason``).

    Raises:
        InvalidArgument: a bad ``wrt`` or Σ (naming ``covariance``); ``ModelExecutionError``
            if ``fn`` raises.
        ResourceExhausted: an M × M covariance above ``max_elements``.
    """
    if strategy not in ("auto", "jacobian", "matrix-free"):
        raise InvalidArgument(
            f"strategy: expected 'auto', 'jacobian' or 'matrix-free'; got {strategy!r}"
        )
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    diff = [inputs[j] for j in chosen]
    n = numel(diff)
    sigma = factor_covariance(covariance, n)
    mean = _evaluate(fn, inputs, chosen, memory_meter, method)
    outputs = mean.outputs
    m = numel(outputs)
    if max_elements is not None and m * m > max_elements:
        raise ResourceExhausted(
            f"the output covariance would have M*M = {m}*{m} = {m * m} elements, above the "
            f"limit of {max_elements} (--max-tensor-elements); propagate to fewer outputs",
            reason=Reason.TENSOR_TOO_LARGE,
            elements=m * m,
            limit_elements=max_elements,
        )
    on_outputs(outputs)
    chosen_method, reason = choose_method(n, m, sigma.rank)
    if strategy != "auto" and strategy != chosen_method:
        chosen_method, reason = strategy, f"{strategy}: asked for (auto: {reason})"
    warnings = []
    if chosen_method == "jacobian":
        on_chunk()
        found = jacobian(
            fn, inputs, wrt=chosen, mode="auto", max_memory_bytes=max_memory_bytes,
            max_elements=max_elements, cache=cache, compiled=compiled,
            memory_meter=memory_meter, method=method,
        )  # fmt: skip
        j = _flat_jacobian(found, len(chosen), n)
        cov = j @ sigma.matrix @ j.T
        results = [found]
    else:
        g, results = _matrix_free(
            fn, inputs, chosen, sigma.factor, m, max_memory_bytes, memory_meter, method, on_chunk
        )
        cov = g @ g.T
        if sigma.rank == 0:
            warnings.append("covariance: Σ is zero, so is the outputs' covariance")
    cov = (cov + cov.T) / 2
    std = cov.diagonal().clamp(min=0).sqrt()
    if not bool(torch.isfinite(cov).all()):
        warnings.append(
            "the output covariance has NaN or infinite entries: the function or its "
            "derivatives are not finite at these inputs"
        )
    result = _combined(mean, results, reason, warnings, count_nonfinite(cov))
    return Propagation(result, cov, std, chosen_method, reason, sigma.rank, warnings)


def _evaluate(
    fn: Callable[..., Any], inputs: Outputs, chosen: tuple[int, ...], meter: str, method: str
) -> EngineResult:
    """The outputs at ``inputs`` (one forward pass, no tape), as an engine result."""
    g = BoundMethod(fn, inputs, chosen, method)
    diff = [inputs[j] for j in chosen]
    with engine_call(inputs, meter) as run:
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            outputs = g(*diff)
        run.forward_seconds = t_forward.seconds
    check_floating_outputs(outputs, method)
    plan = ModePlan("forward", 0, "the outputs")
    return finish(
        run, plan, n=numel(diff), m=numel(outputs), outputs=outputs,
        tuple_output=g.tuple_output, values=(),
    )  # fmt: skip


def _flat_jacobian(result: EngineResult, width: int, n: int) -> torch.Tensor:
    """The blocks [i][j] of a Jacobian as one float64 [M, N] tensor on the CPU."""
    rows = []
    for i, out in enumerate(result.outputs):
        blocks = result.values[i * width : (i + 1) * width]
        rows.append(torch.cat([b.reshape(out.numel(), -1) for b in blocks], 1))
    if not rows:
        return torch.zeros(0, n, dtype=torch.float64)
    return torch.cat(rows, 0).to("cpu", torch.float64)


def _matrix_free(
    fn: Callable[..., Any],
    inputs: Outputs,
    chosen: tuple[int, ...],
    factor: torch.Tensor,
    m: int,
    budget: int | None,
    meter: str,
    method: str,
    on_chunk: Callable[[], None],
) -> tuple[torch.Tensor, list[EngineResult]]:
    """G = J F [M, r] float64 from JVPs of F's columns, in batches."""
    n, r = factor.shape
    limit = min(_CHUNK_BYTES, budget // 2) if budget else _CHUNK_BYTES
    chunk = max(1, min(r, limit // (8 * max(m + n, 1))))
    columns, results = [], []
    for start in range(0, r, chunk):
        on_chunk()
        block = factor[:, start : start + chunk]  # [N, k]
        k = block.shape[1]
        tangents, offset = [], 0
        for j in chosen:
            x = inputs[j]
            part = block[offset : offset + x.numel()].T.reshape(k, *x.shape)
            tangents.append(part.to(device=x.device, dtype=x.dtype))
            offset += x.numel()
        found = jvp(
            fn, inputs, tangents, wrt=chosen, batched=True, memory_meter=meter, method=method
        )
        results.append(found)
        columns.append(
            torch.cat([v.reshape(k, -1) for v in found.values], 1).to("cpu", torch.float64).T
        )
    g = torch.cat(columns, 1) if columns else torch.zeros(m, 0, dtype=torch.float64)
    return g, results


def _combined(
    mean: EngineResult,
    results: list[EngineResult],
    reason: str,
    warnings: list[str],
    nonfinite: int,
) -> EngineResult:
    """One result: ``mean``'s outputs, the last derivative call's metrics with the passes,
    times and peaks of all of them, ``reason`` before the engine's own, and the non-finite
    values of the outputs and of the ``nonfinite`` ones of the covariance."""
    calls = [mean, *results]
    last = results[-1].metrics if results else mean.metrics
    own = [w for r in calls for w in r.metrics.warnings]
    metrics = dataclasses.replace(
        last,
        mode_reason="; ".join(x for x in (reason, last.mode_reason if results else "") if x),
        input_size=mean.metrics.input_size,
        output_size=mean.metrics.output_size,
        passes=sum(r.metrics.passes for r in results),
        forward_seconds=sum(r.metrics.forward_seconds for r in calls),
        derivative_seconds=sum(r.metrics.derivative_seconds for r in calls),
        plan_seconds=sum(r.metrics.plan_seconds for r in calls),
        peak_memory_bytes=max(r.metrics.peak_memory_bytes for r in calls),
        nonfinite_count=mean.metrics.nonfinite_count + nonfinite,
        chunks=len(results) if len(results) > 1 else last.chunks,
        chunk_size=results[0].metrics.batch_size if len(results) > 1 else last.chunk_size,
        warnings=tuple(dict.fromkeys([*own, *warnings])),
    )
    return dataclasses.replace(mean, metrics=metrics)
