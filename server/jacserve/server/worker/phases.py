"""What every worker handler keeps per request: phase timings and the deadline check."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from jacserve.server.errors import DeadlineExceeded
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["Phases", "check_deadline"]


class Phases:
    """Wall time per phase of one request, in seconds, and its verification (if any).

    >>> phases = Phases()
    >>> with phases.phase("decode"):
    ...     pass
    >>> phases.seconds["decode"] >= 0
    True
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {"decode": 0.0, "load": 0.0, "encode": 0.0}
        self.verification: pb.FiniteDifferenceCheck | None = None  # options.verify_directions

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - began


def check_deadline(deadline: float) -> None:
    """Raise DeadlineExceeded when ``deadline`` (``time.monotonic()``) has passed.

    >>> check_deadline(time.monotonic() + 60)
    """
    if time.monotonic() > deadline:
        raise DeadlineExceeded(
            "the call's deadline passed before the derivative was computed; nothing was "
            "computed. Raise the timeout for this model and size"
        )
