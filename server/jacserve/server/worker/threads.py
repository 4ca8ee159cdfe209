"""How many intra-op threads a worker gives a request.

The frontend offers each request the cores shared among the requests computing at that
moment (all of them to a request alone on the server). Extra threads pay only for work
long enough to split: measured on the 2-core CI machine, a 100→128→100 JVP took 1.9 ms
end to end with one thread and 11.6 ms with two, whose OpenMP workers spun on the cores
the client and the frontend needed. So a request gets the offered threads only when the
last request of its kind (operation and payload size, a proxy for its shapes) took at
least :data:`LONG_SECONDS` on one thread (its time times the threads it ran with, so a
kind that became short by running on more threads does not fall back and forth); the
first one of a kind runs with the base count.

>>> policy = ThreadPolicy(base=1, most=4)
>>> policy.threads(("Jacobian", 4096), offered=4)
1
>>> policy.record(("Jacobian", 4096), seconds=0.5, threads=1)
>>> policy.threads(("Jacobian", 4096), offered=4), policy.threads(("Jacobian", 4096), offered=2)
(4, 2)
>>> policy.record(("Jacobian", 4096), seconds=0.015, threads=4)  # 60 ms of one thread's work
>>> policy.threads(("Jacobian", 4096), offered=4)
4
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["LONG_SECONDS", "ThreadPolicy"]

LONG_SECONDS = 0.025
"""Requests shorter than this on one thread keep the base thread count."""
_KINDS = 256


class ThreadPolicy:
    """Intra-op threads per request, from what the frontend offers and what the last
    request of the same kind took.

    Args:
        base: threads every request gets (``--torch-threads``, or cores / workers).
        most: threads a request may get (the cores the server may use).
    """

    def __init__(self, *, base: int, most: int) -> None:
        self._base = max(1, base)
        self._most = max(self._base, most)
        self._seconds: OrderedDict[Hashable, float] = OrderedDict()

    def threads(self, kind: Hashable, offered: object) -> int:
        """Threads for a request of ``kind`` offered ``offered`` threads by the frontend."""
        if not isinstance(offered, int) or self._seconds.get(kind, 0.0) < LONG_SECONDS:
            return self._base
        return max(self._base, min(offered, self._most))

    def record(self, kind: Hashable, *, seconds: float, threads: int) -> None:
        """Remember how long a request of ``kind`` took on ``threads`` threads, as the
        time one thread would have taken (the last few hundred kinds)."""
        self._seconds[kind] = seconds * max(1, threads)
        self._seconds.move_to_end(kind)
        while len(self._seconds) > _KINDS:
            self._seconds.popitem(last=False)
