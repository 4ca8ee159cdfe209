"""Measuring a request: wall time per phase and peak memory.

NOTE: [Peak memory on CPU]
PyTorch's CPU allocator keeps no statistics, so on CPU the peak is read from the
kernel: writing ``5`` to ``/proc/self/clear_refs`` resets the process's resident-set
high-water mark (``VmHWM``), and the peak of a request is ``VmHWM`` at its end minus
``VmRSS`` at its start. This counts every page the request touched (tensors, autograd
tapes, allocator slack) but is process-wide: requests that overlap in one process share
one high-water mark, so each may report the other's peak. On CUDA the caching
allocator's own statistics are used, which are exact for the device.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["PeakMemory", "measure_peak_memory", "stopwatch"]

_PROC_STATUS = pathlib.Path("/proc/self/status")
_PROC_CLEAR_REFS = pathlib.Path("/proc/self/clear_refs")


@dataclass
class PeakMemory:
    """Filled in when a :func:`measure_peak_memory` block ends."""

    bytes: int = 0
    method: str = "unavailable"


@dataclass
class _Elapsed:
    seconds: float = 0.0


@contextlib.contextmanager
def stopwatch() -> Iterator[_Elapsed]:
    """Time a block with ``time.perf_counter``.

    >>> with stopwatch() as t:
    ...     _ = sum(range(1000))
    >>> t.seconds >= 0.0
    True
    """
    elapsed = _Elapsed()
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.seconds = time.perf_counter() - start


def _status_kib(field: str) -> int | None:
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


@contextlib.contextmanager
def measure_peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak memory a block adds on ``device``. See NOTE: [Peak memory on CPU].

    >>> with measure_peak_memory(torch.device("cpu")) as peak:
    ...     _ = torch.ones(1 << 20)
    >>> peak.method in ("cpu_rss_high_water", "unavailable")
    True
    """
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.bytes = max(0, torch.cuda.max_memory_allocated(device) - baseline)
            result.method = "cuda_allocator_peak"
        return
    baseline_kib = None
    with contextlib.suppress(OSError, ValueError):
        baseline_kib = _status_kib("VmRSS")
        _PROC_CLEAR_REFS.write_text("5")
    try:
        yield result
    finally:
        if baseline_kib is not None:
            with contextlib.suppress(OSError, ValueError):
                high_water_kib = _status_kib("VmHWM")
                if high_water_kib is not None:
                    result.bytes = max(0, high_water_kib - baseline_kib) * 1024
                    result.method = "cpu_rss_high_water"
