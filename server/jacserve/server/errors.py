"""Domain errors of the server side, free of gRPC.

The codec, registry and engine raise these; the service maps each class to one gRPC
status code in a single place (:mod:`jacserve.server.service`)::

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

>>> str(NotFound("model 'abc' is not registered"))
"model 'abc' is not registered"
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "JacserveError",
    "ModelExecutionError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "WorkerFailed",
]


class JacserveError(Exception):
    """Base class: an error whose message is meant for the caller."""


class InvalidArgument(JacserveError):
    """The request is malformed or does not fit the model (shapes, dtypes, indices)."""


class ModelExecutionError(InvalidArgument):
    """The uploaded program raised while running on the caller's inputs."""


class NotFound(JacserveError):
    """A model id that is not registered."""


class ResourceExhausted(JacserveError):
    """A size cap was exceeded (archive bytes, tensor elements, cache capacity)."""


class FailedPrecondition(JacserveError):
    """The request is well-formed but the model cannot serve it (for example no parameters)."""


class DeadlineExceeded(JacserveError):
    """The caller's deadline passed (or it cancelled) before the work started."""


class Unauthenticated(JacserveError):
    """The call carries no valid credentials."""


class PermissionDenied(JacserveError):
    """The server does not allow this call (for example uploads are switched off)."""


class WorkerFailed(JacserveError):
    """The worker process running the request crashed; the server itself is unaffected."""
