"""One RPC's plumbing: its request id, the status code and details of its error, its log
line and its Prometheus record.

Every error leaves with ``google.rpc.Status`` details in the ``grpc-status-details-bin``
trailer: an ``ErrorInfo`` (domain ``jacserve.dev``, a stable reason, metadata), a
``RequestInfo`` (the request id), a ``RetryInfo`` when trying again later can succeed and
a ``BadRequest`` when a request field is at fault.

>>> status_for(NotFound("no such model"))
<StatusCode.NOT_FOUND: (5, 'not found')>
>>> status = rich_status(NotFound("gone", model_id="ab"), grpc.StatusCode.NOT_FOUND, "gone", "7")
>>> info = error_details_pb2.ErrorInfo()
>>> status.details[0].Unpack(info), info.reason, dict(info.metadata)
(True, 'MODEL_NOT_FOUND', {'model_id': 'ab'})
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jacserve.server.errors import (
    DOMAIN,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JacserveError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    WorkerFailed,
)
from jacserve.server.metrics import ServiceMetrics

__all__ = [
    "REQUEST_ID_KEY",
    "Observed",
    "abort_with_details",
    "recorded",
    "rich_status",
    "rpc",
    "status_for",
]

_LOG = logging.getLogger("jacserve.server.rpc")
REQUEST_ID_KEY = "x-request-id"
"""Metadata key of the request id: the caller's, or a new one, sent back as a trailer."""

_STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (WorkerFailed, grpc.StatusCode.INTERNAL),
)


def status_for(exc: Exception) -> grpc.StatusCode | None:
    """The status code of a jacserve error (``None``: not one, so INTERNAL)."""
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code
    return None


_MAX_STATUS_MESSAGE = 1024  # the trailers must stay well below the peers' 8 KiB metadata limit
_MAX_DESCRIPTION = 200


def rich_status(
    error: Exception, code: grpc.StatusCode, message: str, request_id: str = ""
) -> status_pb2.Status:
    """The ``google.rpc.Status`` sent with ``error``: any exception that is not a
    :class:`JacserveError` has reason ``INTERNAL``. Its message is the status message
    (cut at 1024 characters)."""
    details = error if isinstance(error, JacserveError) else JacserveError()
    status = status_pb2.Status(code=code.value[0], message=message[:_MAX_STATUS_MESSAGE])
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=details.reason, domain=DOMAIN, metadata=details.metadata)
    )
    if request_id:
        status.details.add().Pack(error_details_pb2.RequestInfo(request_id=request_id))
    if details.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(details.retry_after * 1e9))
        status.details.add().Pack(retry)
    if details.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=details.field,
            description=str(details)[:_MAX_DESCRIPTION],
            reason=details.reason,
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


def abort_with_details(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    error: Exception,
    request_id: str = "",
) -> None:
    """End the call with ``code`` and ``message`` (as without details) and ``error``'s
    ``google.rpc.Status`` details; the ``x-request-id`` trailer stays. Raises, as
    ``context.abort`` does."""
    status = rpc_status.to_status(rich_status(error, code, message, request_id))
    trailers = ((REQUEST_ID_KEY, request_id),) if request_id else ()
    context.set_trailing_metadata(trailers + tuple(status.trailing_metadata))
    context.abort(code, message)


@dataclass
class Observed:
    """What a handler reports about its call for the log and the metrics."""

    mode: str = "none"
    passes: int = 0
    tenant: str = ""  # the caller's (see jacserve.server.tenants)

    def report(self, reply: dict[str, Any]) -> None:
        """Take mode and passes from a worker's reply, which a compromised worker writes:
        only known modes become metric labels."""
        mode = reply.get("mode")
        self.mode = mode if mode in ("forward", "reverse") else "none"
        passes = reply.get("passes")
        self.passes = passes if isinstance(passes, int) and 0 <= passes < 1 << 40 else 0


@contextlib.contextmanager
def recorded(
    metrics: ServiceMetrics, name: str, context: grpc.ServicerContext, tenant: str = ""
) -> Iterator[Observed]:
    """One RPC's request id, error mapping, log line and Prometheus record."""
    metadata = dict(context.invocation_metadata() or ())
    request_id = str(metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex)[:64]
    context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
    started = time.perf_counter()
    observed, code = Observed(tenant=tenant), grpc.StatusCode.OK
    metrics.in_flight(+1)
    try:
        yield observed
    except Exception as exc:
        mapped = status_for(exc)
        if mapped is None:
            code = grpc.StatusCode.INTERNAL
            _LOG.exception("rpc=%s request_id=%s failed unexpectedly", name, request_id)
            message = (
                f"{name}: internal error (request id {request_id}); the server log has the details"
            )
        else:
            code, message = mapped, f"{name}: {exc}"
        abort_with_details(context, code, message, exc, request_id)
    except GeneratorExit:
        code = grpc.StatusCode.CANCELLED  # a stream whose caller went away
        raise
    finally:
        seconds = time.perf_counter() - started
        metrics.in_flight(-1)
        _LOG.info(
            "rpc finished",
            extra={
                "rpc": name,
                "request_id": request_id,
                "tenant": tenant,
                "code": code.name,
                "mode": observed.mode,
                "passes": observed.passes,
                "seconds": round(seconds, 6),
            },
        )
        metrics.observe_rpc(
            name,
            mode=observed.mode,
            code=code.name,
            seconds=seconds,
            passes=observed.passes,
            tenant=tenant,
        )


def rpc(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a servicer's handler (plain or generator) in :func:`recorded`; the servicer
    has ``_metrics`` and ``_tenant(context)``."""

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def streaming(self: Any, request: Any, context: Any) -> Iterator[Any]:
                with recorded(self._metrics, name, context, self._tenant(context)) as observed:
                    yield from handler(self, request, context, observed)

            return streaming

        @functools.wraps(handler)
        def unary(self: Any, request: Any, context: Any) -> Any:
            with recorded(self._metrics, name, context, self._tenant(context)) as observed:
                return handler(self, request, context, observed)

        return unary

    return decorate
