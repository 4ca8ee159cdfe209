"""The largest singular values and vectors of a Jacobian, without forming it.

NOTE: [Lanczos bidiagonalization]
Golub–Kahan–Lanczos builds orthonormal bases ``U`` (outputs) and ``V`` (inputs) with
``J·V = U·B`` for an upper-bidiagonal ``B``: each step is one JVP (``J·v``) and one VJP
(``Jᵀ·u``), and the singular values of the small ``B`` approximate the largest ones of
``J`` first (Ritz values). Vectors are reorthogonalized against all earlier ones (full
reorthogonalization: the plain recurrence loses orthogonality in floating point and
repeats singular values). The last step also takes its VJP, so that ``Jᵀ·U = V·B̃ᵀ``
holds with the s × (s + 1) matrix ``B̃ = [B | β·e_s]``: its singular values are those of
``Uᵀ·J``, exact as soon as ``U`` spans the range of J (a wide Jacobian after m steps, a
scalar output after one). After s steps the top-k triplets of ``B̃`` are lifted back
(``u = U·p``, ``v = V·q``) and checked with k more JVPs and VJPs: the residual
``max(‖J·v − σu‖, ‖Jᵀ·u − σv‖) / σ₁`` says how converged each triplet is. Memory is
``s·(M + N)`` numbers for the bases instead of ``M·N`` for J. The reverse-mode tape of
one evaluation serves every VJP; forward mode holds the process-wide lock while it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp

from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    numel,
    resolve_wrt,
    user_code,
)
from jacserve.server.engine._layout import flat64, split_like
from jacserve.server.engine._measure import stopwatch
from jacserve.server.engine._run import (
    FORWARD_AD_LOCK,
    EngineResult,
    check_floating_outputs,
    engine_call,
    finish,
    missing_forward_rule,
)
from jacserve.server.engine.planner import ModePlan
from jacserve.server.errors import InvalidArgument

__all__ = ["SingularTriplets", "top_singular"]

_BREAKDOWN = 1e-12  # relative size of a Lanczos vector below which the subspace is invariant


@dataclass(frozen=True)
class SingularTriplets:
    """``values`` ``[k]``, ``input_directions`` ``[k, N]``, ``output_directions`` ``[k, M]``,
    ``residuals`` ``[k]`` (relative to the largest value), and the steps taken."""

    values: torch.Tensor
    input_directions: torch.Tensor
    output_directions: torch.Tensor
    residuals: torch.Tensor
    steps: int
    converged: bool = True


def _orthogonalize(vector: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    for _ in range(2):  # twice is enough (Kahan–Parlett)
        for b in basis:
            vector = vector - (b @ vector) * b
    return vector


def top_singular(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    k: int,
    *,
    wrt: Sequence[int] | None = None,
    steps: int = 0,
    seed: int = 0,
    memory_meter: str = "rss",
    method: str = "forward",
) -> tuple[EngineResult, SingularTriplets]:
    """The ``k`` largest singular triplets of the Jacobian at ``inputs``.

    Args:
        fn: the model method.
        inputs: the point.
        k: how many triplets (``1 <= k <= min(n, m)``).
        wrt: indices of the inputs to differentiate; default every floating input.
        steps: Lanczos steps; 0 means ``min(n, m, max(2k + 20, 40))``.
        seed: of the random starting vector (results are reproducible).
        memory_meter: how CPU peak memory is measured.
        method: the method's name, for messages.

    Returns:
        The engine result (outputs, metrics; ``values`` empty) and the triplets.

    >>> a = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    >>> _, t = top_singular(lambda x: a @ x, [torch.ones(3, dtype=torch.float64)], 2)
    >>> [round(v, 12) for v in t.values.tolist()]
    [3.0, 2.0]
    """
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    diff = tuple(inputs[j] for j in chosen)
    n = numel(diff)
    g = BoundMethod(fn, inputs, chosen, method)
    with engine_call(inputs, memory_meter) as run:
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            outputs, pullback = func_vjp(g, *diff)
        run.forward_seconds = t_forward.seconds
        check_floating_outputs(outputs, method)
        m = numel(outputs)
        if not 1 <= k <= min(n, m):
            raise InvalidArgument(f"k must be in 1..min(n, m) = {min(n, m)}; got {k}")
        automatic = not steps
        steps = min(n, m, steps or max(2 * k + 20, 40))
        if steps < k:
            raise InvalidArgument(f"steps must be >= k = {k}; got {steps}")
        tolerance = 1e-8 if all(o.dtype == torch.float64 for o in outputs) else 1e-4
        forward = _forward_product(g, diff, outputs, pullback, run)

        def backward(u: torch.Tensor) -> torch.Tensor:
            return flat64(pullback(split_like(u, outputs)))

        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            triplets, passes = _converged(
                forward,
                backward,
                n,
                k,
                steps,
                seed,
                tolerance,
                most_steps=min(n, m, 8 * steps) if automatic else steps,
            )
        run.derivative_seconds = t_derivative.seconds
        if not triplets.converged:
            run.warnings.append(
                f"top_singular did not converge: the largest residual is "
                f"{float(triplets.residuals.max()):.2e} > {tolerance:g} after {triplets.steps} "
                "Lanczos steps; the values are approximate (ask for more steps)"
            )
    taken = triplets.steps
    plan = ModePlan(
        "forward",
        passes,
        f"Lanczos bidiagonalization: {taken} steps (one JVP and one VJP each) and "
        f"{2 * k} passes to measure the residuals of {k} triplets",
    )
    result = finish(run, plan, n=n, m=m, outputs=outputs, tuple_output=g.tuple_output, values=())
    return result, triplets


def _forward_product(
    g: BoundMethod, diff: tuple[torch.Tensor, ...], outputs: Any, pullback: Any, run: Any
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ J·v`` (flat): forward mode, or the VJP of the VJP when an op has no rule."""

    def by_forward_mode(v: torch.Tensor) -> torch.Tensor:
        with FORWARD_AD_LOCK:
            return flat64(func_jvp(g, diff, split_like(v, diff))[1])

    try:
        by_forward_mode(torch.zeros(numel(diff), dtype=torch.float64))
        return by_forward_mode
    except Exception as exc:
        if not missing_forward_rule(exc):
            raise
        zeros = tuple(torch.zeros_like(o) for o in outputs)
        _, transpose = func_vjp(pullback, zeros)
        run.fall_back(
            f"no forward-mode rule ({str(exc).splitlines()[0][:200]}); J·v as the VJP of the VJP",
            vectorized=False,
        )
        return lambda v: flat64(transpose(split_like(v, diff))[0])


def _converged(
    forward: Callable[[torch.Tensor], torch.Tensor],
    backward: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int,
    steps: int,
    seed: int,
    tolerance: float,
    *,
    most_steps: int,
) -> tuple[SingularTriplets, int]:
    """Lanczos with ``steps``, doubled (up to ``most_steps``) while a residual exceeds
    ``tolerance``; returns the triplets (``converged`` set) and the passes spent."""
    passes = 0
    while True:
        triplets, taken = _lanczos(forward, backward, n, k, steps, seed)
        passes += 2 * taken + 2 * k
        converged = float(triplets.residuals.max()) <= tolerance
        if converged or steps >= most_steps or taken < steps:
            return dataclasses.replace(triplets, converged=converged), passes
        steps = min(most_steps, 2 * steps)


def _lanczos(
    forward: Callable[[torch.Tensor], torch.Tensor],
    backward: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int,
    steps: int,
    seed: int,
) -> tuple[SingularTriplets, int]:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    v = v / v.norm()
    us: list[torch.Tensor] = []
    vs: list[torch.Tensor] = [v]
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for _ in range(steps):
        u = forward(vs[-1])
        if us:
            u = u - betas[-1] * us[-1]
        u = _orthogonalize(u, us)
        alpha = float(u.norm())
        scale = max(scale, alpha)
        if alpha <= _BREAKDOWN * max(scale, 1e-300):
            break
        us.append(u / alpha)
        alphas.append(alpha)
        # the last step too: Jᵀ·U = V·B̃ᵀ holds with B̃ = [B | β·e] (NOTE above), which is
        # exact once U spans J's range (a wide Jacobian, a scalar output)
        w = backward(us[-1]) - alpha * vs[-1]
        w = _orthogonalize(w, vs)
        beta = float(w.norm())
        if beta <= _BREAKDOWN * scale:
            break
        betas.append(beta)
        vs.append(w / beta)
    taken = len(alphas)
    if taken < k:
        raise InvalidArgument(
            f"the Jacobian has rank {taken} < k = {k} here (the Krylov space closed after "
            f"{taken} steps); ask for k <= {taken}"
        )
    b = torch.zeros(taken, len(vs), dtype=torch.float64)  # taken × taken (+ 1)
    b[range(taken), range(taken)] = torch.tensor(alphas, dtype=torch.float64)
    for i, beta in enumerate(betas[: len(vs) - 1]):
        b[i, i + 1] = beta
    left, values, right_t = torch.linalg.svd(b, full_matrices=False)
    u_basis = torch.stack(us)  # [taken, M]
    v_basis = torch.stack(vs)  # [taken (+ 1), N]
    output_directions = (left[:, :k].T @ u_basis).contiguous()
    input_directions = (right_t[:k] @ v_basis).contiguous()
    residuals = []
    for sigma, u, v in zip(values[:k], output_directions, input_directions, strict=True):
        r1 = float((forward(v) - sigma * u).norm())
        r2 = float((backward(u) - sigma * v).norm())
        residuals.append(max(r1, r2) / max(float(values[0]), 1e-300))
    return (
        SingularTriplets(
            values=values[:k].clone(),
            input_directions=input_directions,
            output_directions=output_directions,
            residuals=torch.tensor(residuals, dtype=torch.float64),
            steps=taken,
        ),
        taken,
    )
