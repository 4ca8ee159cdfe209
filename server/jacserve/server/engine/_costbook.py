"""What auto mode has measured of one model at one input signature, and when to probe.

NOTE: [Re-probing]
A :class:`CostBook` keeps, per mode, the times of its last full runs and the points
``(passes, seconds)`` of probes (one vectorized call of that many passes, made after a
request's own passes; see NOTE: [Planning auto mode] in ``planner``). A mode's estimate is
the median of its full runs, or else extrapolated from its probes, with a pessimistic
bound: linear through the origin from the widest probe, tightened by a two-point fit
whose slope error is the margin of noise on each point. The first run of each mode also
checks vectorization with an extra pass (NOTE: [Vectorization check]), so it stands in
only until a clean run exists and never widens the noise margin.

When a full run contradicts the probe-based estimate it was planned on by more than the
margin (the machine got busier, or the probes were taken while it was), every probe
point is dropped, since they were taken under the same conditions, and the other mode
is probed again, within the same budget, from the smallest probe up. A run that differs
from the mode's own earlier runs contradicts nothing: they are measurements of the real
thing, and the margin widens with their spread instead.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field

from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.planner import MIN_MARGIN, Estimate, Mode

__all__ = [
    "FIRST_USE_BUDGET",
    "LATER_BUDGET",
    "ONE_PASS_COST",
    "RUNS_KEPT",
    "CostBook",
    "book_for",
]

RUNS_KEPT = 5
"""Full runs kept per mode (their median is the estimate; their spread widens the margin)."""
FIRST_USE_BUDGET = 0.2
"""Probing on a signature's first request may cost this fraction of its own passes."""
LATER_BUDGET = 0.05
"""... and later, this fraction of all later requests' passes together (amortized: a
probe waits until earlier requests have left enough unspent)."""
ONE_PASS_COST: dict[Mode, float] = {"forward": 8.0, "reverse": 3.0}
"""A one-pass vectorized call's cost in evaluations (generous: measured up to 8.2 and 2.5),
used to predict a first probe's cost before running it."""
_MAX_MARGIN = 1.0


def _other(mode: Mode) -> Mode:
    return "reverse" if mode == "forward" else "forward"


@dataclass
class CostBook:
    """Measured costs of one (model, method, input signature), shared by its requests.

    >>> book = CostBook()
    >>> book.record_run("reverse", 0.010, checked=False, passes=8)
    False
    >>> book.estimate("reverse", 8)
    Estimate(seconds=0.01, pessimistic=0.01, basis='1 reverse run')
    >>> book.record_probe("forward", 2, 0.004)
    >>> book.estimate("forward", 8).pessimistic  # 0.004 s for 2 passes, so 8 at most 0.016 s
    0.016
    """

    runs: dict[Mode, list[float]] = field(default_factory=lambda: {"forward": [], "reverse": []})
    first_runs: dict[Mode, float] = field(default_factory=dict)
    probes: dict[Mode, dict[int, float]] = field(
        default_factory=lambda: {"forward": {}, "reverse": {}}
    )
    unavailable: set[Mode] = field(default_factory=set)
    settled: set[Mode] = field(default_factory=set)
    probe_passes: int = 0
    """Passes spent on probes in all (tests and metrics count planning work by it)."""
    probe_calls: int = 0
    reprobes: int = 0
    run_seconds: float = 0.0
    """All full runs' seconds after the first (the base of the amortized probe budget)."""
    probe_seconds: float = 0.0
    """Seconds spent probing after the first request."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def first_use(self) -> bool:
        """Whether no full run has been recorded yet."""
        return not (self.first_runs or self.runs["forward"] or self.runs["reverse"])

    def margin(self) -> float:
        """The noise margin: ``MIN_MARGIN``, widened to the spread of runs of one mode.

        >>> book = CostBook(runs={"forward": [0.01, 0.02], "reverse": []})
        >>> book.margin()
        0.6666666666666667
        """
        spread = 0.0
        for times in self.runs.values():
            if len(times) >= 2:
                spread = max(spread, (max(times) - min(times)) / statistics.median(times))
        return min(_MAX_MARGIN, max(MIN_MARGIN, spread))

    def estimate(self, mode: Mode, passes: int) -> Estimate | None:
        """The estimate of ``passes`` passes of ``mode``; ``None`` if unmeasured."""
        if mode in self.unavailable:
            return Estimate(float("inf"), float("inf"), f"no {mode}-mode rule")
        runs = self.runs[mode]
        if runs:
            seconds = statistics.median(runs)
            return Estimate(seconds, seconds, f"{len(runs)} {mode} run{'s' * (len(runs) > 1)}")
        if mode in self.first_runs:
            seconds = self.first_runs[mode]
            return Estimate(seconds, seconds, f"the first {mode} run (with its check pass)")
        points = sorted(self.probes[mode].items())
        if not points:
            return None
        widest, t_wide = points[-1]
        basis = f"probes of {', '.join(str(k) for k, _ in points)} {mode} passes"
        if widest >= passes:
            return Estimate(t_wide, t_wide, basis)
        bound = t_wide * passes / widest  # linear with a fixed part >= 0
        if len(points) == 1:
            return Estimate(bound, bound, basis)
        narrow, t_narrow = points[-2]
        slope = max(0.0, (t_wide - t_narrow) / (widest - narrow))
        seconds = t_wide + slope * (passes - widest)
        slope_error = self.margin() * (t_wide + t_narrow) / (widest - narrow)
        return Estimate(seconds, min(bound, seconds + slope_error * (passes - widest)), basis)

    def record_run(self, mode: Mode, seconds: float, *, checked: bool, passes: int) -> bool:
        """Record a full run; returns whether it contradicted its estimate (see the NOTE).

        ``checked``: the run included the vectorization check pass (the first of a mode).
        """
        with self.lock:
            before, margin = self.estimate(mode, passes), self.margin()
            if not self.first_use:
                self.run_seconds += seconds
            if checked:
                self.first_runs.setdefault(mode, seconds)
            else:
                self.runs[mode] = [*self.runs[mode], seconds][-RUNS_KEPT:]
            if before is None or not before.basis.startswith("probes"):
                return False  # runs of its own: their spread widens the margin instead
            slack = 2.0 if checked else 1.0  # the check pass costs up to one more call
            if (
                before.seconds / (1 + margin)
                <= seconds
                <= before.pessimistic * (1 + margin) * slack
            ):
                return False
            other = _other(mode)
            redo = any(self.probes.values()) or other in self.settled
            for points in self.probes.values():
                points.clear()
            self.settled.discard(other)
            self.reprobes += redo
            return redo

    def record_probe(
        self, mode: Mode, passes: int, seconds: float, *, first_use: bool = False
    ) -> None:
        """Record one probe call of ``passes`` passes of ``mode``."""
        with self.lock:
            if not first_use:
                self.probe_seconds += seconds
            self.probes[mode][passes] = seconds
            self.probe_passes += passes
            self.probe_calls += 1

    def next_probe(
        self,
        mode: Mode,
        passes: int,
        *,
        spent_seconds: float,
        evaluation_seconds: float,
        first_use: bool = False,
    ) -> int:
        """Passes of the next probe of ``mode`` worth making now, 0 for none.

        Args:
            mode: the mode that did not run.
            passes: its passes for the full Jacobian.
            spent_seconds: what this request's own passes took (the budget's base).
            evaluation_seconds: what the evaluation took (to predict a first probe).
            first_use: this request was the signature's first (a larger budget).

        >>> book = CostBook(runs={"forward": [0.1], "reverse": []})
        >>> book.next_probe("reverse", 3000, spent_seconds=0.1, evaluation_seconds=0.001)
        1
        >>> book.next_probe("reverse", 3000, spent_seconds=0.1, evaluation_seconds=0.002)
        0
        >>> book.next_probe(
        ...     "reverse", 3000, spent_seconds=0.1, evaluation_seconds=0.002, first_use=True
        ... )
        1
        >>> book.next_probe("reverse", 3000, spent_seconds=0.1, evaluation_seconds=0.1)
        0
        """
        with self.lock:
            if mode in self.settled or mode in self.unavailable or self.runs[mode]:
                return 0
            if first_use:
                budget = spent_seconds * FIRST_USE_BUDGET
            else:  # this request's share, or what earlier requests left unspent
                budget = LATER_BUDGET * max(spent_seconds, self.run_seconds) - self.probe_seconds
            points = self.probes[mode]
            if not points:
                size, predicted = 1, ONE_PASS_COST[mode] * evaluation_seconds
            else:
                size = min(passes, 2 * max(points))
                guess = self.estimate(mode, size)
                predicted = guess.pessimistic if guess is not None else float("inf")
            return size if predicted * (1 + self.margin()) <= budget else 0

    def settle(self, mode: Mode, passes: int, against: Estimate | None) -> None:
        """Stop probing ``mode`` once its probes decide it against ``against`` either way."""
        with self.lock:
            estimate = self.estimate(mode, passes)
            if estimate is None or against is None:
                return
            margin = self.margin()
            widest = max(self.probes[mode], default=0)
            fastest_possible = self.probes[mode].get(widest, 0.0) / (1 + margin)
            if (
                widest >= passes
                or fastest_possible >= against.seconds
                or estimate.pessimistic * (1 + margin) < against.seconds
            ):
                self.settled.add(mode)


def book_for(cache: DerivativeCache, key: Hashable) -> CostBook:
    """The :class:`CostBook` under ``key`` in ``cache``, made (and stored) if missing.

    >>> cache = DerivativeCache()
    >>> book_for(cache, ("cost",)) is book_for(cache, ("cost",))
    True
    """
    book = cache.get(key)
    if book is None:
        book = CostBook()
        cache.put(key, book)
    return book
