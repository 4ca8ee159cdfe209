"""When and how long to wait before trying a failed call again.

>>> policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=0.3, jitter=0.0)
>>> [policy.backoff(attempt) for attempt in range(4)]
[0.1, 0.2, 0.3, 0.3]
>>> RetryPolicy.off().max_attempts
1
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures of idempotent calls.

    Every jacserve call is idempotent (uploads are content-addressed, derivatives have no
    side effects), so all are retried on the ``codes`` below; the call's deadline bounds
    the attempts and their waits together.

    Attributes:
        max_attempts: tries in all, the first included (1: no retries).
        initial_backoff: seconds before the second try.
        multiplier: growth of the wait per try.
        max_backoff: longest single wait.
        jitter: each wait is drawn from ``backoff × [1 - jitter, 1 + jitter]``.
        codes: status codes worth another try: the server was unreachable or restarting
            (UNAVAILABLE) or full (RESOURCE_EXHAUSTED from a full queue).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 5.0
    jitter: float = 0.2
    codes: frozenset[grpc.StatusCode] = frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1; got {self.max_attempts}")
        if self.initial_backoff < 0 or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("need initial_backoff >= 0, multiplier >= 1 and 0 <= jitter < 1")

    @classmethod
    def off(cls) -> RetryPolicy:
        """No retries: every failure is raised at once."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (0-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def should_retry(self, code: grpc.StatusCode, attempt: int, message: str = "") -> bool:
        """Whether failed try ``attempt`` (0-based) with ``code`` deserves another.

        RESOURCE_EXHAUSTED is retried only when the server was busy (a full queue or too
        many calls), not when the request itself is too large.
        """
        if attempt + 1 >= self.max_attempts or code not in self.codes:
            return False
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return "queued" in message or "Concurrent RPC limit" in message
        return True
