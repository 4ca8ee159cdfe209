"""Auto mode's planning around a Jacobian's passes: plan from a :class:`CostBook`, then
record the run and probe the other mode within the budget.

See NOTE: [Planning auto mode] in ``planner`` and NOTE: [Re-probing] in ``_costbook``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from jacserve.server.engine._costbook import CostBook
from jacserve.server.engine._measure import stopwatch
from jacserve.server.engine._run import Run, missing_forward_rule
from jacserve.server.engine.planner import Estimate, Mode, ModePlan, RequestedMode, plan_mode

__all__ = ["learn", "planned", "probe_after_run"]


def planned(n: int, m: int, mode: RequestedMode, book: CostBook | None) -> ModePlan:
    """The plan from what ``book`` knows (see NOTE: [Planning auto mode] in ``planner``).

    >>> planned(3, 8, "auto", CostBook()).mode
    'reverse'
    """
    if book is None:
        return plan_mode(n, m, mode)
    with book.lock:
        estimates = (book.estimate("forward", n), book.estimate("reverse", m))
        margin = book.margin()
    return plan_mode(n, m, mode, estimates=estimates, margin=margin)


def learn(
    run: Run,
    book: CostBook,
    plan: ModePlan,
    ran: ModePlan,
    *,
    requested: RequestedMode,
    checked: bool,
    passes: dict[Mode, int],
    probes: dict[Mode, Callable[[int], object]],
) -> ModePlan:
    """Record a full run in ``book``; in auto mode probe the other mode within the budget.

    Args:
        run: the request's record (its times; probing adds to ``plan_seconds``).
        book: the signature's measurements.
        plan: what was planned; ``ran``: what ran (forward may have fallen back).
        requested: the caller's mode; only ``"auto"`` probes.
        checked: the run included the vectorization check pass.
        passes: each mode's passes for the full Jacobian.
        probes: ``probes[mode](k)`` runs ``k`` passes of ``mode`` in one vectorized call.

    Returns:
        ``ran``, its reason extended by the planning work done so far.

    See NOTE: [Planning auto mode] in ``planner`` and NOTE: [Re-probing] in ``_costbook``.
    """
    if ran.mode != plan.mode:  # forward mode had no rule and fell back
        with book.lock:
            book.unavailable.add("forward")
    first_use = book.first_use
    reprobe = book.record_run(ran.mode, run.derivative_seconds, checked=checked, passes=ran.passes)
    if requested != "auto":
        return ran
    other: Mode = "reverse" if ran.mode == "forward" else "forward"
    with book.lock:
        known = book.estimate(ran.mode, ran.passes)
    spent = probe_after_run(
        book,
        other,
        passes[other],
        known,
        spent_seconds=run.derivative_seconds,
        evaluation_seconds=run.forward_seconds,
        first_use=first_use,
        run=probes[other],
        device=run.device,
    )
    run.plan_seconds += spent
    notes = [f"planning: {book.probe_passes} probe passes for this signature so far"]
    if first_use:
        notes.append("first use")
    if reprobe:
        notes.append(f"this run contradicted the {ran.mode} estimate, so the probes are redone")
    return dataclasses.replace(ran, reason=f"{ran.reason}; {'; '.join(notes)}")


def probe_after_run(
    book: CostBook,
    other: Mode,
    passes: int,
    ran: Estimate | None,
    *,
    spent_seconds: float,
    evaluation_seconds: float,
    first_use: bool,
    run: Callable[[int], object],
    device: torch.device,
) -> float:
    """Probe the mode that did not run if the budget allows (see NOTE: [Planning auto
    mode]); returns the seconds spent. An error of the probe only stops probing that mode
    (a missing forward rule marks forward mode unavailable).

    >>> book = CostBook(runs={"forward": [0.5], "reverse": []})
    >>> spent = probe_after_run(book, "reverse", 100, book.estimate("forward", 3),
    ...     spent_seconds=0.5, evaluation_seconds=0.001, first_use=True,
    ...     run=lambda k: None, device=torch.device("cpu"))
    >>> book.probe_passes, spent >= 0
    (1, True)
    """
    size = book.next_probe(
        other,
        passes,
        spent_seconds=spent_seconds,
        evaluation_seconds=evaluation_seconds,
        first_use=first_use,
    )
    if not size:
        return 0.0
    with stopwatch(device) as elapsed:  # no warm-up: a cold call only overestimates
        try:
            run(size)
        except Exception as exc:
            failed: BaseException | None = exc
        else:
            failed = None
    with book.lock:
        if failed is not None:
            (book.unavailable if missing_forward_rule(failed) else book.settled).add(other)
            return elapsed.seconds
    book.record_probe(other, size, elapsed.seconds, first_use=first_use)
    book.settle(other, passes, ran)
    return elapsed.seconds
