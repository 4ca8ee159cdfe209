"""Errors raised by the jacserve client, one class per gRPC status code::

    JacserveError                 .code, .message, .request_id, .reason, .metadata,
                                  .retry_delay, .field_violations
    ├── InvalidArgument           INVALID_ARGUMENT: fix the request (shapes, dtypes, wrt, archive)
    ├── NotFound                  NOT_FOUND: unknown model id
    ├── ResourceExhausted         RESOURCE_EXHAUSTED: a size cap or the server's concurrency limit
    ├── FailedPrecondition        FAILED_PRECONDITION: the model cannot serve this request
    ├── DeadlineExceeded          DEADLINE_EXCEEDED: the call's timeout passed
    ├── Unauthenticated           UNAUTHENTICATED: missing or wrong token
    ├── PermissionDenied          PERMISSION_DENIED
    ├── Unavailable               UNAVAILABLE: no server at the target, or it is shutting down
    └── Internal                  INTERNAL and every other code: quote the request id

The server sends each error's ``google.rpc.Status`` details (the
``grpc-status-details-bin`` trailer); :func:`from_rpc_error` reads them into ``reason``
(the ``ErrorInfo`` reason, for example ``"MODEL_NOT_FOUND"`` or ``"QUEUE_FULL"``; ``""``
when the error came without details, as errors raised by gRPC itself do), ``metadata``
(``ErrorInfo.metadata``), ``retry_delay`` (seconds from ``RetryInfo``, ``None`` when the
server does not suggest retrying) and ``field_violations`` (``BadRequest``: field →
description). Programs should branch on these, never on the message text.

>>> err = NotFound("model abc is not registered", request_id="7f3a")
>>> err.code.name, str(err)
('NOT_FOUND', 'model abc is not registered (request id 7f3a)')
>>> err.reason, err.metadata, err.retry_delay, err.field_violations
('', {}, None, {})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

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
    "parse_status_details",
]

REQUEST_ID_KEY = "x-request-id"
DETAILS_KEY = "grpc-status-details-bin"
DOMAIN = "jacserve.dev"


class JacserveError(Exception):
    """A failed call: the gRPC ``code``, the server's ``message`` and the ``request_id``."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        request_id: str = "",
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
        field_violations: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        if code is not None:
            self.code = code
        self.reason = reason
        """``ErrorInfo.reason``: stable, UPPER_SNAKE_CASE; ``""`` without details."""
        self.metadata: dict[str, str] = dict(metadata or {})
        """``ErrorInfo.metadata``: for example ``operator``, ``bytes_needed``, ``model_id``."""
        self.retry_delay = retry_delay
        """Seconds the server suggests waiting before a retry (``RetryInfo``), or ``None``."""
        self.field_violations: dict[str, str] = dict(field_violations or {})
        """Request fields at fault (``BadRequest``): field path → description."""

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


def parse_status_details(trailing: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """The details in a ``grpc-status-details-bin`` trailer, as keyword arguments of
    :class:`JacserveError` (empty when there are none or they do not decode).

    >>> status = status_pb2.Status(code=8, message="full")
    >>> _ = status.details.add().Pack(error_details_pb2.ErrorInfo(reason="QUEUE_FULL"))
    >>> parse_status_details([(DETAILS_KEY, status.SerializeToString())])["reason"]
    'QUEUE_FULL'
    """
    raw = next((v for k, v in trailing or () if k == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return {}
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return {}
    found: dict[str, Any] = {}
    info, retry, bad = (
        error_details_pb2.ErrorInfo(),
        error_details_pb2.RetryInfo(),
        error_details_pb2.BadRequest(),
    )
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            found.update(reason=info.reason, metadata=dict(info.metadata))
        elif detail.Is(retry.DESCRIPTOR) and detail.Unpack(retry):
            found["retry_delay"] = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
            found["field_violations"] = {v.field: v.description for v in bad.field_violations}
    return found


def from_rpc_error(error: grpc.RpcError) -> JacserveError:
    """Translate a ``grpc.RpcError`` into the matching :class:`JacserveError` subclass,
    with the details the server sent.

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
    pairs = [(str(k), v) for k, v in trailing or ()]
    request_id = dict(pairs).get(REQUEST_ID_KEY, "")
    cls = _BY_CODE.get(code, Internal)
    return cls(
        details or code.name,
        request_id=str(request_id),
        code=code,
        **parse_status_details(pairs),
    )
