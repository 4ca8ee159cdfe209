"""The gRPC frontend: authenticate, check, queue, hand the work to a worker, answer.

It runs no user code and holds no math: archives are checked statically
(:class:`~jacserve.server.registry.ArchiveStore`) and loaded only in workers; derivative
requests travel to a worker as serialized messages in shared memory and the worker's
serialized response goes back to the caller unparsed. Every failure is mapped to a
status code by :mod:`~jacserve.server.rpc`; unexpected exceptions become INTERNAL with a
request id the caller can quote (the traceback goes to the log only).

NOTE: [How long a call may run]
A derivative call's deadline is the caller's own when it set one (gRPC carries it), else
``--request-timeout`` (300 s); ``--max-call-seconds`` (default 0: none) caps either, so
an operator can bound every call whatever its caller asked. Past the deadline, or when
the caller cancels or disconnects, the frontend stops the call's worker (within its
poll interval) and frees the slot. Independently, ``--worker-cpu-seconds`` (600) stops a
worker whose request used that much CPU. A call that sends no data for minutes keeps its
connection: the server accepts client pings every ``--min-client-ping-interval-ms``
(30 s; the SDK pings every 60 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from jacserve.server.access import ModelAccess, not_registered
from jacserve.server.derivative_rpcs import DerivativeRpcs
from jacserve.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    WorkerFailed,
    archive_checks,
)
from jacserve.server.metrics import ServiceMetrics
from jacserve.server.registry.store import ArchiveStore, StagedArchive, check_model_id
from jacserve.server.rpc import REQUEST_ID_KEY, Observed, rpc
from jacserve.server.tenants import DEFAULT_TENANT, TokenTable, tenant_of
from jacserve.server.uploads import UploadSlots, receive_upload
from jacserve.server.worker.operations import DERIVATIVE_REQUESTS, STREAMING_REQUESTS
from jacserve.server.worker.pool import LoadFailure, WorkerPool, worker_key
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["REQUEST_ID_KEY", "SERVICE_NAME", "FrontendSettings", "JacobianServicer"]

_LOG = logging.getLogger("jacserve.server.rpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["JacobianService"].full_name
_CALL = threading.local()  # the tenant of the call this thread serves (see _tenant)


@dataclass(frozen=True)
class FrontendSettings:
    """Caps and switches of the frontend."""

    max_archive_bytes: int
    max_message_bytes: int = 512 << 20
    allow_uploads: bool = True
    request_timeout_seconds: float = 300.0
    max_call_seconds: float = 0.0  # 0: none
    upload_idle_seconds: float = 30.0
    max_uploads_per_peer: int = 4
    max_uploads: int = 8  # in all: jacserve.server.uploads.total_upload_slots(max_workers)
    tenant_max_models: int | None = None  # None: no per-tenant cap
    tenant_max_bytes: int | None = None


class JacobianServicer(DerivativeRpcs):
    """Implements ``jacserve.v1.JacobianService`` over an archive store and a worker pool.

    Register it with :meth:`add_to_server`: derivative responses are passed through as
    the bytes the worker serialized. With ``tokens``, each caller is the tenant of its
    token (:mod:`~jacserve.server.tenants`) and sees only its own models
    (:mod:`~jacserve.server.access`).
    """

    def __init__(
        self,
        store: ArchiveStore,
        pool: WorkerPool,
        metrics: ServiceMetrics,
        settings: FrontendSettings,
        tokens: TokenTable | None = None,
    ) -> None:
        self._store = store
        self._pool = pool
        self._metrics = metrics
        self._settings = settings
        self._tokens = tokens
        self._catalog = store.catalog()  # a shared store's catalog is shared too
        self._access = ModelAccess(
            store,
            self._catalog,
            max_models=settings.tenant_max_models,
            max_bytes=settings.tenant_max_bytes,
        )
        self._uploads = UploadSlots(
            per_peer=settings.max_uploads_per_peer, total=settings.max_uploads
        )
        metrics.track_models(lambda: len(self._catalog), pool.size)

    # -- models ---------------------------------------------------------------------------

    def _tenant(self, context: grpc.ServicerContext | None) -> str:
        """The caller's tenant (``default`` without tokens or a caller), worked out once
        per call: the RPC's plumbing asks first, then model lookups ask again in the same
        thread (a call runs in one thread of the server's pool)."""
        if context is None:
            return DEFAULT_TENANT
        last = getattr(_CALL, "tenant", None)
        if last is not None and last[0] is context:
            return last[1]
        tenant = tenant_of(context, self._tokens)
        _CALL.tenant = (context, tenant)
        return tenant

    def _deadline(self, context: grpc.ServicerContext | None) -> float:
        """The caller's deadline; ``--request-timeout`` only when the caller set none; never
        past ``--max-call-seconds`` when that is set (see NOTE: [How long a call may run])."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is None or not math.isfinite(remaining):
            remaining = self._settings.request_timeout_seconds
        if self._settings.max_call_seconds:
            remaining = min(remaining, self._settings.max_call_seconds)
        return time.monotonic() + remaining

    def _capped(self, context: grpc.ServicerContext | None) -> Callable[[], None]:
        """Re-raise a DeadlineExceeded naming ``--max-call-seconds`` when that cut it."""
        remaining = context.time_remaining() if context is not None else None
        limit = self._settings.max_call_seconds

        def explain() -> None:
            caller = remaining if remaining is not None and math.isfinite(remaining) else None
            if limit and (caller is None or caller > limit):
                raise DeadlineExceeded(
                    f"the call ran past the server's maximum call length of {limit:g} s "
                    "(--max-call-seconds), whatever the caller's deadline; its worker was "
                    "stopped. Use a smaller problem or ask the operator for a longer maximum",
                    reason=Reason.CALL_TOO_LONG,
                    max_call_seconds=f"{limit:g}",
                ) from None

        return explain

    @staticmethod
    def _cancelled(context: grpc.ServicerContext | None) -> Callable[[], bool]:
        return (lambda: not context.is_active()) if context is not None else lambda: False

    def _refused(self, model_id: str, failure: LoadFailure, *, checked: bool) -> Exception:
        """Forget an archive that could not be loaded. One that never passed its check is
        removed (and marked bad if its loader crashed or hung). One that had passed is
        quarantined, kept for its operator, if its loader crashed or hung or the worker now
        refuses it; a failure that is not the archive's (no worker could start, its file
        or the shared store was briefly missing) quarantines nothing."""
        if failure.crashed or (checked and isinstance(failure.error, InvalidArgument)):
            _LOG.error("quarantined model %s: %s", model_id, failure.error)
            self._catalog.quarantine(model_id, str(failure.error), keep_archive=checked)
            self._pool.forget(model_id, every_tenant=True)
        if not checked:  # (a checked one was moved to quarantine)
            with contextlib.suppress(NotFound):
                self._store.remove(model_id)
        return failure.error

    def _describe(
        self, model_id: str, context: grpc.ServicerContext | None, *, keep: bool = False
    ) -> pb.ModelInfo:
        """Have a worker load the stored archive, check its operators and describe it;
        ``keep``: an archive refused now goes to quarantine rather than away (one the
        operator put in the store)."""
        checked = keep or self._catalog.get(model_id) is not None
        try:
            body = self._pool.describe(
                worker_key(model_id, self._tenant(context)),
                deadline=self._deadline(context),
                cancelled=self._cancelled(context),
            )
        except LoadFailure as failure:
            raise self._refused(model_id, failure, checked=checked) from None
        info = pb.ModelInfo.FromString(body)
        self._catalog.put(model_id, info)
        return info

    def info(self, model_id: str, context: grpc.ServicerContext | None = None) -> pb.ModelInfo:
        """The description of a stored model (loading it in a worker on first use).

        Raises:
            InvalidArgument: malformed id or an archive that does not load.
            NotFound: unknown id, or another tenant's. FailedPrecondition: a quarantined
                archive.
        """
        check_model_id(model_id)
        if not self._access.may_use(model_id, self._tenant(context)):
            raise not_registered(model_id)
        info = self._catalog.get(model_id)
        self._metrics.model_lookup(info is not None)
        if info is not None:
            return info
        reason = self._catalog.quarantined(model_id)
        if reason is not None:
            raise _quarantined(model_id, reason)
        if not self._store.path(model_id).exists():
            raise not_registered(model_id)
        return self._describe(model_id, context)

    def _check_uploads(self) -> None:
        if not self._settings.allow_uploads:
            raise PermissionDenied(
                "this server serves only the models preloaded in its model directory "
                "(uploads are off: --allow-uploads false); ask its operator to add the model",
                reason=Reason.UPLOADS_DISABLED,
            )

    def register(
        self, data: bytes, context: grpc.ServicerContext | None = None, *, expected_id: str = ""
    ) -> tuple[pb.ModelInfo, bool]:
        """Check, store and describe an inline archive; a refused one leaves nothing."""
        self._check_uploads()
        model_id = hashlib.sha256(data).hexdigest()
        known = self._catalog.get(model_id)
        if (
            known is not None
            and not expected_id
            and self._access.may_use(model_id, self._tenant(context))
        ):
            return known, True  # an inline archive sent again: nothing to stage or check
        with archive_checks():
            staged = self._store.receive([data], expected_id=expected_id)
        try:
            return self.register_staged(staged, context)
        finally:
            self._store.discard(staged)  # a no-op once committed

    def preload(self) -> list[str]:
        """Describe every stored archive not yet described (at start-up), each in its own
        worker; returns the ids that failed (now quarantined). Archives described before
        are not loaded at all. Archives nobody was granted are the operator's and shared
        by every tenant (NOTE: [Who owns an archive] in ``access``)."""
        failed = []
        stored = self._store.ids()
        for model_id in self._access.share_ungranted(stored):
            _LOG.info("model %s has no owner: the operator's, shared by every tenant", model_id)
        for model_id in stored:
            if self._catalog.get(model_id) is not None:
                continue
            try:
                self._describe(model_id, None, keep=True)
            except Exception as exc:
                _LOG.error("stored archive %s does not load: %s", model_id, exc)
                failed.append(model_id)
        return failed

    def register_staged(
        self, staged: StagedArchive, context: grpc.ServicerContext | None = None
    ) -> tuple[pb.ModelInfo, bool]:
        """Keep and describe a received archive, granted to the caller's tenant (within
        its quota); returns (description, whether the tenant owned it already). A refused
        one leaves nothing behind (see NOTE: [Who owns an archive] in ``access``)."""
        model_id, tenant = staged.model_id, self._tenant(context)
        with self._access.locked(model_id):
            reason = self._catalog.quarantined(model_id)
            if reason is not None:
                if self._access.may_use(model_id, tenant):
                    raise _quarantined(model_id, reason)
                raise InvalidArgument(reason[:1000], reason=Reason.ARCHIVE_REJECTED)  # as first
            owned = self._access.claim(model_id, tenant, staged.size_bytes)  # before storing
            known = self._catalog.get(model_id)
            if known is not None and owned:
                return known, True
            if known is None:
                self._store.commit(staged)  # the worker is handed the stored file
            try:  # a new grant loads in the tenant's own worker, as new bytes would
                return self._describe(model_id, context), owned
            except Exception as exc:
                described = self._catalog.get(model_id) is not None
                if not described and self._catalog.quarantined(model_id) is None:
                    if isinstance(exc, (ResourceExhausted, WorkerFailed, DeadlineExceeded)):
                        with contextlib.suppress(NotFound):
                            self._store.remove(model_id)  # not checked: nothing stays behind
                    if not owned:
                        self._access.release(model_id, tenant)
                raise

    @rpc("UploadModel")
    def UploadModel(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: Any, observed: Observed
    ) -> pb.UploadModelResponse:
        self._check_uploads()  # before reading the stream, as are the upload slots
        with self._uploads.admit(context.peer()):
            staged = receive_upload(
                self._store, request_iterator, idle_seconds=self._settings.upload_idle_seconds
            )
            try:
                info, already = self.register_staged(staged, context)
            finally:
                self._store.discard(staged)  # a no-op once committed
        return pb.UploadModelResponse(model=info, already_present=already)

    @rpc("GetModel")
    def GetModel(
        self, request: pb.GetModelRequest, context: Any, observed: Observed
    ) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=self.info(request.model_id, context))

    @rpc("ListModels")
    def ListModels(
        self, request: pb.ListModelsRequest, context: Any, observed: Observed
    ) -> pb.ListModelsResponse:
        visible = self._access.visible(observed.tenant, self._store.ids())
        return pb.ListModelsResponse(
            models=[m for m in self._catalog.all() if m.model_id in visible]
        )

    @rpc("DeleteModel")
    def DeleteModel(
        self, request: pb.DeleteModelRequest, context: Any, observed: Observed
    ) -> pb.DeleteModelResponse:
        self._check_uploads()
        model_id = check_model_id(request.model_id)
        with self._access.locked(model_id):  # the grant goes first (NOTE: [Who owns an archive])
            grant = self._access.deletion(model_id, observed.tenant)
            if self._access.release(model_id, grant):  # others own it: keep it for them
                self._pool.forget(worker_key(model_id, observed.tenant))
            else:
                if self._catalog.quarantined(model_id) is not None:
                    self._catalog.release(model_id)
                with contextlib.suppress(NotFound):  # a grant left by an interrupted upload
                    self._store.remove(model_id)
                self._catalog.forget(model_id)
                self._pool.forget(model_id, every_tenant=True)
        return pb.DeleteModelResponse()

    @rpc("GetServerInfo")
    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Any, observed: Observed
    ) -> pb.GetServerInfoResponse:
        return pb.GetServerInfoResponse(
            max_message_bytes=self._settings.max_message_bytes,
            max_archive_bytes=self._store.max_archive_bytes,
            uploads_allowed=self._settings.allow_uploads,
            workers=self._pool.size,
        )

    def add_to_server(self, server: grpc.Server) -> None:
        """Register the service; derivative responses go out as the worker's bytes."""
        service = pb.DESCRIPTOR.services_by_name["JacobianService"]
        handlers = {}
        for method in service.methods:
            request_type = getattr(pb, method.input_type.name)
            passthrough = method.name in DERIVATIVE_REQUESTS or method.name in STREAMING_REQUESTS
            if method.client_streaming:
                make = grpc.stream_unary_rpc_method_handler
            elif method.server_streaming:
                make = grpc.unary_stream_rpc_method_handler
            else:
                make = grpc.unary_unary_rpc_method_handler
            handlers[method.name] = make(
                getattr(self, method.name),
                request_deserializer=request_type.FromString,
                response_serializer=bytes if passthrough else _serialize,
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _quarantined(model_id: str, reason: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"model {model_id} is quarantined: its archive crashed, hung or was refused "
        f"while loading ({reason[:300]}); delete it (DeleteModel) and upload a fixed one",
        reason=Reason.MODEL_QUARANTINED,
        model_id=model_id,
    )
