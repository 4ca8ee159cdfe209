"""Measuring, on first use, what one derivative pass costs in time and memory.

NOTE: [Cost model]
A full Jacobian in one mode costs about ``fixed + per_pass × passes``: the fixed part is
the vmap call and, in reverse mode, the forward evaluation that records the tape; the
per-pass part depends on the program and differs between modes (a reverse pass replays
the tape, a forward pass carries tangents alongside the values). Both parts are fitted
from two timed runs of the real computation, with 1 and with ``PROBE_PASSES`` basis
vectors (the faster of two tries each, after a warm-up), so auto mode compares measured
estimates rather than n and m alone. Memory is fitted the same way from the peak of live
tensor bytes of runs with 1 and 2 passes, measured by :class:`LiveTensorMeter`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jacserve.server.engine._measure import LiveTensorMeter

__all__ = ["PROBE_PASSES", "MemoryProfile", "ModeCost", "probe_cost", "probe_memory"]

PROBE_PASSES = 16


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
    """Fit :class:`MemoryProfile` for ``run(k)`` from the live-tensor peaks of k = 1, 2.

    >>> profile = probe_memory(lambda k: torch.ones(k, 1 << 16), 10)
    >>> profile.per_pass_bytes
    262144
    """
    peaks = []
    for k in (1, 2) if passes >= 2 else (1,):
        with LiveTensorMeter() as meter:
            run(k)
        peaks.append(meter.peak_bytes)
    per_pass = max(0, peaks[-1] - peaks[0]) if len(peaks) == 2 else peaks[0]
    return MemoryProfile(fixed_bytes=max(0, peaks[0] - per_pass), per_pass_bytes=per_pass)
