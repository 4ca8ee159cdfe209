"""Tuning glibc's malloc for a long-running process that allocates large tensors.

NOTE: [Keeping freed memory]
PyTorch's CPU tensors come from malloc. glibc serves allocations above its mmap threshold
(128 KiB at start) with fresh mmap'd pages and returns them to the kernel when freed, and
trims the heap top above 128 KiB. A Jacobian request allocates and frees the same large
blocks every time, so each request page-faults its memory in again: measured here, a
10→4000 MLP Jacobian in reverse mode took 32.5 ms with 1.46 s of system time over the
run, and 18.7 ms with 0.30 s once freed memory was kept (1000×1000: 8.6 → 5.2 ms).
:func:`keep_freed_memory` raises both thresholds so freed blocks stay in the process for
the next request, as jemalloc or tcmalloc would. The cost is that the process keeps its
high-water mark of resident memory; ``--allocator default`` turns this off.

NOTE: [Returning upload chunks]
The frontend is the opposite case: it receives upload chunks (1 MiB from the SDK), each
allocated by gRPC's threads and freed by another. glibc's dynamic mmap threshold rises to
the largest block freed (up to 32 MiB), after which the chunks come from per-thread
arenas that fragment and are not trimmed: measured here, three concurrent 300 MiB
uploads took the frontend's resident memory from 45 MB to 434 MB after four rounds (peak
567 MB), although no chunk was kept. :func:`return_large_blocks` fixes the threshold at
256 KiB, so every chunk is its own mapping, returned to the kernel when freed (the same
uploads: 65 MB after each round, peak 117 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

__all__ = ["keep_freed_memory", "return_large_blocks"]

_LOG = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 1 << 30  # glibc's ceiling for 64-bit (HEAP_MAX_SIZE / 2 ≈ 32 MiB applies
#                                 to the dynamic threshold only; an explicit value may be larger)


_FRONTEND_MMAP_THRESHOLD = 256 << 10


def _mallopt() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return None


def return_large_blocks() -> bool:
    """Have glibc give blocks above 256 KiB back to the kernel when freed (see NOTE:
    [Returning upload chunks]); returns whether the allocator accepted.

    >>> isinstance(return_large_blocks(), bool)
    True
    """
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _FRONTEND_MMAP_THRESHOLD))


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; returns whether the allocator accepted.

    >>> isinstance(keep_freed_memory(), bool)
    True
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    accepted = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )
    _LOG.info("malloc keeps freed memory for reuse: %s", accepted)
    return accepted
