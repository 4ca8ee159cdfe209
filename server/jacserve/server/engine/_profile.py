"""Measuring, on first use, what one derivative pass costs in memory.

NOTE: [Cost model]
A full Jacobian in one mode costs about ``fixed + per_pass × passes`` in time and in
memory. Time is auto mode's business (NOTE: [Planning auto mode] in ``planner``). Memory
is fitted from the peak of live tensor bytes, measured by :class:`LiveTensorMeter`, of
runs with ``MEMORY_PROBE_PASSES`` and half as many passes: below a few dozen passes vmap's
memory grows more slowly than linearly (measured: 16 KB per pass from 1 to 16 passes,
40 KB from 32 to 256 on one model), so a fit at small counts would under-plan large
chunks; fitted at 32–64 it is within 1% at 256 and conservative below 32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jacserve.server.engine._measure import LiveTensorMeter

__all__ = ["MEMORY_PROBE_PASSES", "MemoryProfile", "probe_memory"]

MEMORY_PROBE_PASSES = 64


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


def probe_memory(run: Callable[[int], object], passes: int) -> MemoryProfile:
    """Fit :class:`MemoryProfile` for ``run(k)`` from live-tensor peaks at two counts.

    >>> import torch
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
