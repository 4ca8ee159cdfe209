"""Requests that cannot finish are refused before they cost their model a worker.

Each request stopped at its deadline kills its worker, so the model's next request pays
a fork and a load again. After consecutive overruns of one model, a request with less
time left than those ran is refused at once; any request of the model that finishes
clears the record.

>>> overruns = Overruns()
>>> overruns.overran("m", 2.0); overruns.overran("m", 2.5)
>>> import time
>>> overruns.refuse_hopeless("m", time.monotonic() + 1.0)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
DeadlineExceeded: the last 2 requests for this model ran past their deadlines ...
>>> overruns.finished("m"); overruns.refuse_hopeless("m", time.monotonic() + 1.0)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from jacserve.server import errors

__all__ = ["Overruns"]

_BEFORE_REFUSAL = 2


@dataclass
class _Record:
    count: int = 0
    seconds: float = 0.0


class Overruns:
    """Consecutive deadline overruns per model. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def overran(self, model_id: str, seconds: float) -> None:
        """A request of ``model_id`` was stopped at its deadline after ``seconds``."""
        with self._lock:
            record = self._records.setdefault(model_id, _Record())
            record.count += 1
            record.seconds = max(record.seconds, seconds)

    def finished(self, model_id: str) -> None:
        """A request of ``model_id`` finished: forget its overruns."""
        with self._lock:
            self._records.pop(model_id, None)

    def refuse_hopeless(self, model_id: str, deadline: float) -> None:
        """Raise if the model's recent requests overran and this one has less time.

        Raises:
            DeadlineExceeded: nothing was started.
        """
        with self._lock:
            record = self._records.get(model_id)
            if record is None or record.count < _BEFORE_REFUSAL:
                return
            count, needed = record.count, record.seconds
        left = deadline - time.monotonic()
        if left < needed:
            raise errors.DeadlineExceeded(
                f"the last {count} requests for this model ran past their deadlines (after "
                f"{needed:.2f}s) and this one has {left:.2f}s left, so it was not started; "
                "nothing was computed. Call with a longer deadline (a request that finishes "
                "clears this)",
                reason=errors.Reason.DEADLINE_TOO_SHORT,
                seconds_left=f"{left:.3f}",
                seconds_needed=f"{needed:.3f}",
            )
