"""Which way a Jacobian fits a memory budget: the plain path, forward mode, or
checkpointed reverse (see NOTE: [Checkpointed reverse] in ``checkpointed``).

NOTE: [Fitting the budget]
With ``max_memory_bytes`` and a mode that may run reverse (auto or reverse), the first
call at a signature measures, in one forward pass that keeps nothing, what the reverse
tape would hold. If the tape, the result and one pass fit the budget, the plain engine
runs (it chunks its passes to the budget as before). If not, auto mode runs forward mode
(no tape at all) when it needs at most 1.5× as many passes as reverse; otherwise, and
always for a forced reverse, the program is cut into segments (checkpointed reverse).
The decision is kept per signature and budget. The first checkpointed Jacobian at a
signature is checked against one forward-mode JVP (a random direction), so a graph the
segments misread can never return a wrong number: a mismatch is an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.checkpointed import GraphSegments, SegmentPlan, replaying, rng_state
from jacserve.server.engine.planner import ModePlan
from jacserve.server.errors import ModelExecutionError

__all__ = ["GraphSource", "Route", "checkpointed_run", "route"]

GraphSource = Callable[[Sequence[torch.Tensor]], torch.fx.GraphModule | None]
"""The method as an FX graph over its inputs (``None`` where it cannot be had)."""

_FORWARD_PASSES = 1.5  # forward mode may need this many times reverse's passes
_HEADROOM = 0.85


@dataclass(frozen=True)
class Route:
    """``"forward"`` or ``"checkpointed"`` (with its graph and plan), and why."""

    kind: str
    reason: str
    graph: GraphSegments | None = None
    plan: SegmentPlan | None = None


def route(
    graph: GraphSource,
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    *,
    mode: str,
    budget: int,
    cache: DerivativeCache | None,
    key: tuple[Hashable, ...],
) -> Route | None:
    """How a Jacobian fits ``budget`` (``None``: the plain path; see NOTE: [Fitting the
    budget]). Raises ResourceExhausted when nothing fits."""
    cached = cache.get(("budget-route", *key)) if cache is not None else None
    if cached is not None:
        return cached if isinstance(cached, Route) else None
    found = _decide(graph, inputs, wrt, mode=mode, budget=budget)
    if cache is not None:
        cache.put(("budget-route", *key), found if found is not None else "plain")
    return found


def _decide(
    graph: GraphSource,
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    *,
    mode: str,
    budget: int,
) -> Route | None:
    module = graph(inputs)
    if module is None:
        return None
    try:
        segments = GraphSegments(module, len(inputs))
    except ValueError:
        return None
    with replaying(rng_state()):  # the profiling pass draws no random numbers of the call's
        profile = segments.profile(inputs, wrt)
    element = max(inputs[j].element_size() for j in wrt)
    n = sum(inputs[j].numel() for j in wrt)
    m = profile.output_elements
    plain = (m * n + m) * element + profile.tape_bytes + 2 * profile.largest_output
    if plain <= budget * _HEADROOM:
        return None
    tape = f"the reverse tape (about {profile.tape_bytes} bytes) with the result does not fit the memory budget of {budget} bytes"
    if mode == "auto" and n <= _FORWARD_PASSES * m:
        return Route("forward", f"auto: forward, which keeps no tape: {tape}")
    plan = segments.plan(inputs, wrt, budget=budget, element_bytes=element, profile=profile)
    return Route(
        "checkpointed",
        f"{mode}: checkpointed reverse in {plan.segments} segment(s), {plan.chunk} row(s) per "
        f"sweep: {tape}"
        + (f", and forward needs {n} passes against {m}" if mode == "auto" else ""),
        segments,
        plan,
    )


def checkpointed_run(
    chosen: Route,
    fn: Callable[..., object],
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    *,
    verified: bool,
) -> tuple[ModePlan, tuple[torch.Tensor, ...], list[torch.Tensor], float, float]:
    """Run a checkpointed route: (plan, outputs, blocks, forward-and-derivative seconds,
    recompute seconds); the first run at a signature (``verified`` False) is checked.

    Raises:
        ModelExecutionError: the checked direction disagrees with forward mode.
    """
    assert chosen.graph is not None and chosen.plan is not None
    state = rng_state()  # the check draws the random numbers the Jacobian drew
    started = time.perf_counter()
    outputs, blocks, recompute = chosen.graph.jacobian(inputs, wrt, chosen.plan)
    seconds = time.perf_counter() - started
    if not verified:
        with replaying(state):
            _check(fn, inputs, wrt, outputs, blocks)
    m = sum(o.numel() for o in outputs)
    plan = ModePlan("reverse", m, chosen.reason, 0.0, 0.0)
    return plan, outputs, blocks, seconds, recompute


def _check(
    fn: Callable[..., object],
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[int],
    outputs: Sequence[torch.Tensor],
    blocks: Sequence[torch.Tensor],
) -> None:
    """J·v from the blocks against one forward-mode JVP in a random direction."""
    generator = torch.Generator().manual_seed(0)
    tangents = [
        torch.randn(inputs[j].shape, generator=generator, dtype=inputs[j].dtype).to(
            inputs[j].device
        )
        for j in wrt
    ]

    def at(*values: torch.Tensor) -> object:
        args = list(inputs)
        for j, value in zip(wrt, values, strict=True):
            args[j] = value
        return fn(*args)

    try:
        _, expected = torch.func.jvp(at, tuple(inputs[j] for j in wrt), tuple(tangents))
    except (RuntimeError, NotImplementedError):
        return  # no forward-mode rule for some op: nothing to compare with
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    width = len(wrt)
    for i, output in enumerate(outputs):
        got = sum(
            blocks[i * width + k].reshape(output.numel(), -1) @ tangents[k].reshape(-1)
            for k in range(width)
        )
        want = expected[i].reshape(-1)
        scale = float(want.abs().max()) if want.numel() else 0.0
        tolerance = (1e-8 if output.dtype == torch.float64 else 1e-3) * max(1.0, scale)
        if want.numel() and float((got - want).abs().max()) > tolerance * 10:
            raise ModelExecutionError(
                "checkpointed reverse mode disagreed with forward mode on this model "
                f"(output {i}: {float((got - want).abs().max()):.3g} apart); it was not "
                "used. Raise the memory budget (max_memory_bytes) or use mode=forward"
            )
