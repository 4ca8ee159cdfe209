"""What this process may use: CPUs and memory, as a container's limits see them.

``os.cpu_count()`` and the physical memory are the host's; in a container (Kubernetes,
Docker with ``--cpus``/``--memory``) the cgroup v2 limits are what count. Worker counts,
threads per worker and each worker's memory limit derive from these numbers.

>>> available_cpus() >= 1 and available_memory_bytes() > 0
True
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["available_cpus", "available_memory_bytes"]

CGROUP_ROOT = "/sys/fs/cgroup"


def _limit(path: pathlib.Path) -> list[str] | None:
    """The fields of a cgroup limit file, or ``None`` where it is absent or unlimited."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    return None if not fields or fields[0] == "max" else fields


def available_cpus(cgroup_root: str = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota
    (rounded down: a 1.5-CPU limit gives 1, which is never throttled).

    >>> available_cpus("/nonexistent") == len(os.sched_getaffinity(0))
    True
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    count = count or os.cpu_count() or 1
    quota = _limit(pathlib.Path(cgroup_root, "cpu.max"))
    if quota is not None and len(quota) == 2:
        count = min(count, max(1, int(quota[0]) // int(quota[1])))
    return count


def available_memory_bytes(cgroup_root: str = CGROUP_ROOT) -> int:
    """Physical memory, capped by a cgroup memory limit.

    >>> available_memory_bytes("/nonexistent") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    True
    """
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _limit(pathlib.Path(cgroup_root, "memory.max"))
    return min(physical, int(limit[0])) if limit is not None else physical
