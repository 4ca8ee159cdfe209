"""Measuring, on first use, what one derivative pass costs in time and memory.

NOTE: [Cost model]
A full Jacobian in one mode costs about ``fixed + per_pass × passes``: the fixed part is
the vmap call and, in reverse mode, the forward evaluation that records the tape; the
per-pass part depends on the program and differs between modes (a reverse pass replays
the tape, a forward pass carries tangents alongside the values). Both parts are fitted
from two timed runs of the real computation, with 1 and with ``PROBE_PASSES`` basis
vectors (the faster of two tries each, after a warm-up), so auto mode compares measured
estimates rather than n and m alone. Memory is fitted the same way from the peak of live
tensor bytes, measured by :class:`LiveTensorMeter`, of runs with ``MEMORY_PROBE_PASSES``
and half as many passes: below a few dozen passes vmap's memory grows more slowly than
linearly (measured: 16 KB per pass from 1 to 16 passes, 40 KB from 32 to 256 on one
model), so a fit at small counts would under-plan large chunks; fitted at 32–64 it is
within 1% at 256 and conservative below 32.

Probes extrapolate; full runs do not. After every unchunked run the engine records the
run's own time for its mode (an exponential average), and later plans use that figure in
place of the probe's estimate. A mode that was chosen wrongly therefore shows its real
cost on the next request and loses to the other, which is then timed in turn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jacserve.server.engine._measure import LiveTensorMeter

__all__ = [
    "MEMORY_PROBE_PASSES",
    "PROBE_PASSES",
    "MemoryProfile",
    "ModeCost",
    "probe_cost",
    "probe_memory",
]

PROBE_PASSES = 16
MEMORY_PROBE_PASSES = 64


@dataclass(frozen=True)
class ModeCost:
    """Fitted time of one mode: ``fixed_seconds + per_pass_seconds × passes``."""

    fixed_seconds: float
    per_pass_seconds: float

    def estimate(self, passes: int) -> float:
        """Estimated seconds for ``passes`` passes in one vectorized call.

        >>> ModeCost(0.001, 0.0001).estimate(10)
        0.002
        """
        return self.fixed_seconds + self.per_pass_seconds * passes


@dataclass(frozen=True)
class MemoryProfile:
    """Fitted peak bytes of one mode: ``fixed_bytes + per_pass_bytes × chunk``."""

    fixed_bytes: int
    per_pass_bytes: int

    def largest_chunk(self, budget_bytes: int, reserved_bytes: int, passes: int) -> int:
        """Most passes per chunk that keep the peak under the budget; 0 if none fits.

        >>> MemoryProfile(100, 10).largest_chunk(1000, 400, passes=1000)
        50
        """
        room = budget_bytes - reserved_bytes - self.fixed_bytes
        if room < self.per_pass_bytes:
            return 0
        if self.per_pass_bytes == 0:
            return passes
        return min(passes, room // self.per_pass_bytes)

    def needed_bytes(self, reserved_bytes: int, chunk: int = 1) -> int:
        """Peak bytes of a run with ``chunk`` passes per call."""
        return reserved_bytes + self.fixed_bytes + self.per_pass_bytes * chunk


def _timed(run: Callable[[int], object], passes: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run(passes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def probe_cost(run: Callable[[int], object], passes: int, device: torch.device) -> ModeCost:
    """Fit :class:`ModeCost` for ``run(k)``, which computes ``k`` passes of one mode.

    >>> cost = probe_cost(lambda k: torch.ones(k * 1000).sum(), 100, torch.device("cpu"))
    >>> cost.per_pass_seconds >= 0 and cost.fixed_seconds >= 0
    True
    """
    wide = max(1, min(passes, PROBE_PASSES))
    run(wide)  # warm-up: first calls pay for dispatch caches
    t_one = _timed(run, 1, device)
    if wide == 1:
        return ModeCost(fixed_seconds=0.0, per_pass_seconds=t_one)
    t_wide = _timed(run, wide, device)
    per_pass = max(0.0, (t_wide - t_one) / (wide - 1))
    return ModeCost(fixed_seconds=max(0.0, t_one - per_pass), per_pass_seconds=per_pass)


def probe_memory(run: Callable[[int], object], passes: int) -> MemoryProfile:
    """Fit :class:`MemoryProfile` for ``run(k)`` from live-tensor peaks at two counts.

    >>> profile = probe_memory(lambda k: torch.ones(k, 1 << 16), 10)
    >>> profile.per_pass_bytes, profile.fixed_bytes
    (262144, 0)
    """
    wide = max(1, min(passes, MEMORY_PROBE_PASSES))
    counts = (wide // 2, wide) if wide >= 2 else (wide,)
    peaks = []
    for k in counts:
        with LiveTensorMeter() as meter:
            run(k)
        peaks.append(meter.peak_bytes)
    if len(counts) == 1:
        return MemoryProfile(fixed_bytes=0, per_pass_bytes=peaks[0])
    per_pass = max(0, (peaks[1] - peaks[0]) // (counts[1] - counts[0]))
    return MemoryProfile(
        fixed_bytes=max(0, peaks[1] - per_pass * counts[1]), per_pass_bytes=per_pass
    )
