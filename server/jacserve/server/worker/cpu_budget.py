"""The per-request CPU-time limit of a worker (``--worker-cpu-seconds``).

The kernel's ``RLIMIT_CPU`` counts the whole process, but a worker also does work no
request asked for: the background compiler (:mod:`jacserve.server.engine.compiled`)
may spend seconds building a program while a request runs or waits for it (a compile
job holds the model lock), and charging that to the request would stop innocent ones.
So :class:`CpuBudget` moves the soft limit to "CPU used so far + the budget" when a
request starts, a watcher thread moves it further by whatever the background threads
used since, and the limit is lifted between requests. Past it the kernel sends SIGXCPU and the worker dies; the frontend reports
RESOURCE_EXHAUSTED. ``RLIMIT_CPU`` counts whole seconds, so a budget of ``s`` stops a
request after between ``s`` and ``s + 1`` CPU seconds of its own. (A CI run once saw a
3-element Jacobian stopped at a 1 s budget: it was the first request of a fresh worker
and paid 1.04 CPU seconds of torch's lazy imports, against a budget that happened to be
1.02 s. Workers now pay those imports before they report ready.)
"""

from __future__ import annotations

import contextlib
import math
import resource
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["CpuBudget"]


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuBudget:
    """A CPU-time limit per request that does not charge background threads.

    Args:
        seconds: CPU seconds a request may use; 0 means no limit.
        background_seconds: CPU seconds used so far by work that belongs to no request.
        interval: how often the watcher credits background work, in seconds.

    >>> budget = CpuBudget(0, background_seconds=lambda: 0.0)
    >>> with budget.request():
    ...     pass
    """

    def __init__(
        self, seconds: float, background_seconds: Callable[[], float], interval: float = 0.1
    ) -> None:
        self._seconds = seconds
        self._background_seconds = background_seconds
        self._interval = interval
        self._lock = threading.Lock()
        self._active = threading.Event()
        self._start: tuple[float, float] | None = None  # process and background CPU at start
        self._watcher: threading.Thread | None = None

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Limit the CPU time of the code inside (the request), then lift the limit."""
        if self._seconds <= 0:
            yield
            return
        with self._lock:
            self._start = (_process_cpu_seconds(), self._background_seconds())
            self._move_limit()
            self._active.set()
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="jacserve-cpu-budget", daemon=True
                )
                self._watcher.start()
        try:
            yield
        finally:
            with self._lock:
                self._active.clear()
                self._start = None
                _set_soft_limit(None)

    def _move_limit(self) -> None:
        assert self._start is not None
        used, background = self._start
        credit = max(0.0, self._background_seconds() - background)
        _set_soft_limit(math.ceil(used + credit + self._seconds))

    def _watch(self) -> None:
        while True:
            self._active.wait()
            with self._lock:
                if self._start is not None:
                    self._move_limit()
            # sleep outside the lock; a request that ends meanwhile lifts the limit itself
            time.sleep(self._interval)


def _set_soft_limit(seconds: int | None) -> None:
    """Soft RLIMIT_CPU to ``seconds`` of process CPU time (None: up to the hard limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        soft = hard
    else:
        soft = seconds if hard == resource.RLIM_INFINITY else min(seconds, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
