"""Domain errors of the server side, free of gRPC.

The codec, registry and engine raise these; the service maps each class to one gRPC
status code in a single place (:mod:`jacserve.server.rpc`)::

    JacserveError
    ├── InvalidArgument      → INVALID_ARGUMENT
    │   └── ModelExecutionError   (the user's program raised on the given inputs)
    ├── NotFound             → NOT_FOUND
    ├── ResourceExhausted    → RESOURCE_EXHAUSTED
    ├── FailedPrecondition   → FAILED_PRECONDITION
    ├── DeadlineExceeded     → DEADLINE_EXCEEDED
    ├── Unauthenticated      → UNAUTHENTICATED
    ├── PermissionDenied     → PERMISSION_DENIED
    └── WorkerFailed         → INTERNAL (a worker crashed; the message says how)

Each error also carries what a program needs to act on it, sent as ``google.rpc``
details: a stable ``reason`` (one of :class:`Reason`; each class has a default), string
``metadata`` (the operator, the bytes needed, the model id …), the request ``field`` at
fault, and ``retry_after`` seconds when trying again later can succeed.

>>> str(NotFound("model 'abc' is not registered"))
"model 'abc' is not registered"
>>> error = ResourceExhausted("full", reason=Reason.QUEUE_FULL, retry_after=0.5, queued=3)
>>> error.reason, error.metadata, error.retry_after
('QUEUE_FULL', {'queued': '3'}, 0.5)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DOMAIN",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "JacserveError",
    "ModelExecutionError",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "ResourceExhausted",
    "Unauthenticated",
    "WorkerFailed",
    "archive_checks",
    "error_from_reply",
    "error_reply",
]

DOMAIN = "jacserve.dev"
"""The ``ErrorInfo.domain`` of every jacserve error."""


class Reason:
    """The stable ``ErrorInfo.reason`` values (UPPER_SNAKE_CASE; new ones may be added)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # a request field is wrong (BadRequest names it)
    INVALID_TENSOR = "INVALID_TENSOR"  # a Tensor message does not decode
    INVALID_MODEL_ID = "INVALID_MODEL_ID"  # not 64 lowercase hex digits
    ARCHIVE_REJECTED = "ARCHIVE_REJECTED"  # the archive does not load or fails its checks
    OPERATOR_NOT_ALLOWED = "OPERATOR_NOT_ALLOWED"  # the model calls a disallowed operator
    MODEL_EXECUTION_FAILED = "MODEL_EXECUTION_FAILED"  # the program raised on the inputs
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"  # unknown (or, for this caller, invisible) model id
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"  # a size cap of the server
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"  # the tenant's --tenant-max-models / --tenant-max-bytes
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"  # the response would exceed the message limit
    ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"
    TENSOR_TOO_LARGE = "TENSOR_TOO_LARGE"  # above --max-tensor-elements
    BUDGET_TOO_SMALL = "BUDGET_TOO_SMALL"  # options.max_memory_bytes is below one pass
    OUT_OF_MEMORY = "OUT_OF_MEMORY"  # the worker ran out of memory
    CPU_LIMIT_EXCEEDED = "CPU_LIMIT_EXCEEDED"  # the request used its CPU seconds
    QUEUE_FULL = "QUEUE_FULL"  # retryable: every worker busy and the queue full
    UPLOADS_BUSY = "UPLOADS_BUSY"  # retryable: too many uploads in progress
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    MODEL_QUARANTINED = "MODEL_QUARANTINED"  # its archive crashed, hung or was refused
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"  # retryable (on another replica)
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # the call ran past its deadline
    DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"  # refused at once: it cannot finish in time
    CALL_TOO_LONG = "CALL_TOO_LONG"  # past the server's --max-call-seconds
    UNAUTHENTICATED = "UNAUTHENTICATED"  # missing or wrong bearer token
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UPLOADS_DISABLED = "UPLOADS_DISABLED"  # --allow-uploads false
    WORKER_CRASHED = "WORKER_CRASHED"  # the model's worker died on this request
    WORKER_UNAVAILABLE = "WORKER_UNAVAILABLE"  # retryable: a worker could not start
    MODEL_STORE_UNAVAILABLE = "MODEL_STORE_UNAVAILABLE"  # retryable: the object store is down
    ARCHIVE_CORRUPTED = "ARCHIVE_CORRUPTED"  # the stored object's hash is not its id
    INTERNAL = "INTERNAL"  # a bug: the server log has the details


_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,62}[A-Z0-9]")
_KEY = re.compile(r"[a-z][a-zA-Z0-9_]{0,62}")
_MAX_METADATA, _MAX_VALUE, _MAX_FIELD, _MAX_RETRY_SECONDS = 16, 512, 200, 3600.0


class JacserveError(Exception):
    """Base class: an error whose message is meant for the caller.

    Args:
        message: what the caller reads.
        reason: a :class:`Reason` value (default: the class's).
        field: the request field at fault (``"options.max_memory_bytes"``, ``"inputs[0]"``).
        retry_after: seconds after which the same call may succeed (only retryable errors).
        **metadata: facts for programs, sent as strings (``operator="aten::foo"``).
    """

    reason: str = Reason.INTERNAL
    retry_after: float | None = None

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        field: str = "",
        retry_after: float | None = None,
        **metadata: Any,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if retry_after is not None:
            self.retry_after = retry_after
        self.field = field
        self.metadata = {key: str(value) for key, value in metadata.items()}


class InvalidArgument(JacserveError):
    """The request is malformed or does not fit the model (shapes, dtypes, indices)."""

    reason = Reason.INVALID_ARGUMENT


class ModelExecutionError(InvalidArgument):
    """The uploaded program raised while running on the caller's inputs."""

    reason = Reason.MODEL_EXECUTION_FAILED


class NotFound(JacserveError):
    """A model id that is not registered."""

    reason = Reason.MODEL_NOT_FOUND


class ResourceExhausted(JacserveError):
    """A size cap was exceeded (archive bytes, tensor elements, cache capacity)."""

    reason = Reason.LIMIT_EXCEEDED


class FailedPrecondition(JacserveError):
    """The request is well-formed but the model cannot serve it (for example no parameters)."""

    reason = Reason.FAILED_PRECONDITION


class DeadlineExceeded(JacserveError):
    """The caller's deadline passed (or it cancelled) before the work started."""

    reason = Reason.DEADLINE_EXCEEDED


class Unauthenticated(JacserveError):
    """The call carries no valid credentials."""

    reason = Reason.UNAUTHENTICATED


class PermissionDenied(JacserveError):
    """The server does not allow this call (for example uploads are switched off)."""

    reason = Reason.PERMISSION_DENIED


class Unavailable(JacserveError):
    """A service the server depends on (the shared model store) did not answer; retryable."""

    reason = Reason.MODEL_STORE_UNAVAILABLE
    retry_after = 1.0


class WorkerFailed(JacserveError):
    """The worker process running the request crashed; the server itself is unaffected."""

    reason = Reason.WORKER_CRASHED


@contextlib.contextmanager
def archive_checks() -> Iterator[None]:
    """Checking an archive: an :class:`InvalidArgument` raised inside without a more
    specific reason or a field refuses the archive, reason ``ARCHIVE_REJECTED``.

    >>> try:
    ...     with archive_checks():
    ...         raise InvalidArgument("archive is not a zip file")
    ... except InvalidArgument as exc:
    ...     exc.reason
    'ARCHIVE_REJECTED'
    """
    try:
        yield
    except InvalidArgument as exc:
        if exc.reason == Reason.INVALID_ARGUMENT and not exc.field:
            exc.reason = Reason.ARCHIVE_REJECTED
        raise


def error_reply(error: JacserveError, kind: str, message: str) -> dict[str, Any]:
    """The worker's reply header for ``error`` (class name ``kind``), details included.

    >>> error_reply(NotFound("gone", model_id="ab"), "NotFound", "gone")["metadata"]
    {'model_id': 'ab'}
    """
    reply: dict[str, Any] = {"ok": False, "error": kind, "message": message}
    reply.update(reason=error.reason, metadata=error.metadata, field=error.field)
    if error.retry_after is not None:
        reply["retry_after"] = error.retry_after
    return reply


def error_from_reply(
    cls: type[JacserveError], reply: dict[str, Any], message: str
) -> JacserveError:
    """Rebuild the error a worker replied with. A compromised worker writes the reply, so
    only well-formed, bounded details are kept (else the class's defaults).

    >>> reply = {"reason": "QUEUE_FULL", "metadata": {"queued": 3, "Bad Key": 1}}
    >>> e = error_from_reply(ResourceExhausted, reply, "full")
    >>> e.reason, e.metadata
    ('QUEUE_FULL', {'queued': '3'})
    """
    reason = reply.get("reason")
    metadata = reply.get("metadata")
    field, retry_after = reply.get("field"), reply.get("retry_after")
    error = cls(message)
    if isinstance(reason, str) and _REASON.fullmatch(reason):
        error.reason = reason
    if isinstance(metadata, dict):
        items = [(k, v) for k, v in metadata.items() if isinstance(k, str) and _KEY.fullmatch(k)]
        error.metadata = {k: str(v)[:_MAX_VALUE] for k, v in items[:_MAX_METADATA]}
    if isinstance(field, str):
        error.field = field[:_MAX_FIELD]
    if isinstance(retry_after, (int, float)) and 0 <= retry_after <= _MAX_RETRY_SECONDS:
        error.retry_after = float(retry_after)
    return error
