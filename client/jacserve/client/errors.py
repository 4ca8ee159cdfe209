"""Errors raised by the jacserve client, one class per gRPC status code::

    JacserveError                 .code, .message, .request_id
    ├── InvalidArgument           INVALID_ARGUMENT: fix the request (shapes, dtypes, wrt, archive)
    ├── NotFound                  NOT_FOUND: unknown model id
    ├── ResourceExhausted         RESOURCE_EXHAUSTED: a size cap or the server's concurrency limit
    ├── FailedPrecondition        FAILED_PRECONDITION: the model cannot serve this request
    ├── DeadlineExceeded          DEADLINE_EXCEEDED: the call's timeout passed
    ├── Unauthenticated           UNAUTHENTICATED: missing or wrong token
    ├── PermissionDenied          PERMISSION_DENIED
    ├── Unavailable               UNAVAILABLE: no server at the target, or it is shutting down
    └── Internal                  INTERNAL and every other code: quote the request id

>>> err = NotFound("model abc is not registered", request_id="7f3a")
>>> err.code.name, str(err)
('NOT_FOUND', 'model abc is not registered (request id 7f3a)')
"""

from __future__ import annotations

import grpc

__all__ = [
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "JacserveError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]

REQUEST_ID_KEY = "x-request-id"


class JacserveError(Exception):
    """A failed call: the gRPC ``code``, the server's ``message`` and the ``request_id``."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, *, request_id: str = "", code: grpc.StatusCode | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} (request id {self.request_id})" if self.request_id else self.message


class InvalidArgument(JacserveError):
    """The request does not fit the model or the wire contract."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(JacserveError):
    """The model id is not registered on the server."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(JacserveError):
    """A size cap (message, archive, tensor elements) or the concurrency limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(JacserveError):
    """The request is well-formed but the model cannot serve it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(JacserveError):
    """The call did not finish within its timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(JacserveError):
    """The server wants credentials that were missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(JacserveError):
    """The credentials do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(JacserveError):
    """No server answered at the target (not started, wrong address, shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE


class Internal(JacserveError):
    """The server failed unexpectedly; quote the request id to its operators."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[JacserveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        FailedPrecondition,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError) -> JacserveError:
    """Translate a ``grpc.RpcError`` into the matching :class:`JacserveError` subclass.

    >>> class Fake(grpc.RpcError):
    ...     def code(self): return grpc.StatusCode.NOT_FOUND
    ...     def details(self): return "GetModel: model x is not registered"
    ...     def trailing_metadata(self): return (("x-request-id", "42"),)
    >>> type(from_rpc_error(Fake())).__name__
    'NotFound'
    """
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    trailing = (
        error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else ()
    )
    request_id = dict(trailing or ()).get(REQUEST_ID_KEY, "")
    cls = _BY_CODE.get(code, Internal)
    return cls(details or code.name, request_id=str(request_id), code=code)
