"""When and how long to wait before trying a failed call again.

Whether to retry is read from the error's details (its ``ErrorInfo`` reason and
``RetryInfo``), never from its message.

>>> from jacserve.client.errors import ResourceExhausted, Unavailable
>>> policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=0.3, jitter=0.0)
>>> [policy.backoff(attempt) for attempt in range(4)]
[0.1, 0.2, 0.3, 0.3]
>>> RetryPolicy.off().max_attempts
1
>>> full = ResourceExhausted("busy", reason="QUEUE_FULL", retry_delay=0.25)
>>> policy.should_retry(full, 0), policy.wait(full, 0)
(True, 0.25)
>>> policy.should_retry(ResourceExhausted("too big", reason="MESSAGE_TOO_LARGE"), 0)
False
>>> policy.should_retry(Unavailable("no server"), 0)
True
>>> policy.should_retry(ResourceExhausted("Concurrent RPC limit exceeded!"), 0)  # no details
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from jacserve.client.errors import JacserveError

__all__ = ["RETRYABLE_REASONS", "RetryPolicy"]

RETRYABLE_REASONS = frozenset(
    {
        "QUEUE_FULL",
        "UPLOADS_BUSY",
        "SERVER_SHUTTING_DOWN",
        "WORKER_UNAVAILABLE",
        "MODEL_STORE_UNAVAILABLE",
    }
)
"""Reasons worth another try even without a ``RetryInfo``: the server was busy or restarting."""


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
        codes: status codes worth another try when the error carries no details (gRPC
            itself raised it): UNAVAILABLE (no server, or it is restarting) and
            RESOURCE_EXHAUSTED (the server's ``--max-concurrent-rpcs`` calls were in
            flight; the call never ran). gRPC refuses a message above either side's size
            limit with the same bare RESOURCE_EXHAUSTED; the client tells that one apart
            by the request's size and labels it ``MESSAGE_TOO_LARGE``, which is not
            retried.
        reasons: ``ErrorInfo`` reasons worth another try; any error with a
            ``RetryInfo`` is retried as well, after at least its delay.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 5.0
    jitter: float = 0.2
    codes: frozenset[grpc.StatusCode] = frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    )
    reasons: frozenset[str] = RETRYABLE_REASONS

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

    def wait(self, error: JacserveError, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based) failed with ``error``:
        the backoff, but no less than the server's ``RetryInfo`` delay (capped at
        ``max_backoff``)."""
        wait = self.backoff(attempt)
        if error.retry_delay is not None:
            wait = max(wait, min(error.retry_delay, self.max_backoff))
        return wait

    def should_retry(self, error: JacserveError, attempt: int) -> bool:
        """Whether failed try ``attempt`` (0-based) that raised ``error`` deserves another.

        An error with details is retried when its reason is one of ``reasons`` or it
        carries a ``RetryInfo``; one without (raised by gRPC, not the server) when its
        code is one of ``codes``.
        """
        if attempt + 1 >= self.max_attempts:
            return False
        if error.retry_delay is not None or error.reason in self.reasons:
            return True
        return not error.reason and error.code in self.codes
