"""How both clients reach a server: channel options, credentials, metadata.

>>> settings = ConnectionSettings("127.0.0.1:50051", token="t")
>>> settings.metadata
(('authorization', 'Bearer t'),)
>>> dict(settings.options())["grpc.keepalive_time_ms"]
60000
>>> dict(ConnectionSettings("h:1", channel_options=[("grpc.keepalive_time_ms", 5)]).options())[
...     "grpc.keepalive_time_ms"]
5
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc

from jacserve.client._retry import RetryPolicy
from jacserve.client._sharding import ShardedJacobian, resolved_addresses, worth_splitting
from jacserve.client.errors import JacserveError, ResourceExhausted
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TARGET",
    "MODEL_ID",
    "UNSET",
    "CallOptions",
    "ClientBase",
    "ConnectionSettings",
    "Metadata",
]

UNSET: Any = object()  # "the client's default" for a per-call argument
Metadata = Sequence[tuple[str, str]]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 512 << 20
UPLOAD_CHUNK_BYTES = 1 << 20
MODEL_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to connect (the constructor arguments both clients share)."""

    target: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    token: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    extra_metadata: Sequence[tuple[str, str]] = field(default_factory=tuple)
    channel_options: Sequence[tuple[str, Any]] = field(default_factory=tuple)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Sent with every call: the bearer token, then the caller's own entries."""
        token = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return (*token, *tuple(self.extra_metadata))

    @property
    def upload_chunk_bytes(self) -> int:
        """Size of each upload message, below the message limit."""
        return max(1, min(UPLOAD_CHUNK_BYTES, self.max_message_bytes - 1024))

    def options(self) -> list[tuple[str, Any]]:
        """Channel options: message limits and keepalive (a ping a minute while idle,
        so a dead connection behind a load balancer is noticed), then the caller's
        ``channel_options``, which replace a default of the same name."""
        defaults = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # a DNS name of several replicas (a headless Service) spreads calls over all
            ("grpc.lb_policy_name", "round_robin"),
        ]
        own = {name for name, _ in self.channel_options}
        return [o for o in defaults if o[0] not in own] + list(self.channel_options)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or ``None`` for a plaintext channel."""
        if self.tls or self.root_certificates or self.certificate_chain:
            return grpc.ssl_channel_credentials(
                self.root_certificates, self.private_key, self.certificate_chain
            )
        return None


@dataclass(frozen=True)
class CallOptions:
    """One call's deadline (seconds, ``None``: none), metadata (the client's, then the
    call's) and compression (the call's, else the client's, else the channel's).

    >>> CallOptions(5.0, (("x-request-id", "r1"),)).with_timeout(1.0).timeout
    1.0
    """

    timeout: float | None
    metadata: tuple[tuple[str, str], ...] = ()
    compression: grpc.Compression | None = None

    def with_timeout(self, timeout: float | None) -> CallOptions:
        """The same options with another deadline (what is left of this one, say)."""
        return dataclasses.replace(self, timeout=timeout)


class ClientBase:
    """What both clients hold: settings, retry policy, channel and stub, known model ids.

    Subclasses set ``_grpc`` to ``grpc`` or ``grpc.aio`` (the same channel constructors).
    """

    _grpc: ClassVar[Any] = grpc

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        retry: RetryPolicy | None = None,
        compression: grpc.Compression | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.targets = (target,) if isinstance(target, str) else tuple(target)
        if not self.targets:
            raise ValueError("target: need at least one 'host:port'")
        self.target = self.targets[0]
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._settings = ConnectionSettings(
            self.target, max_message_bytes, token, tls, root_certificates, private_key,
            certificate_chain, tuple(metadata), tuple(channel_options),
        )  # fmt: skip
        self.compression = compression
        credentials = self._settings.credentials()
        options = self._settings.options()
        self._channels = [
            self._grpc.secure_channel(t, credentials, options=options, compression=compression)
            if credentials is not None
            else self._grpc.insecure_channel(t, options=options, compression=compression)
            for t in self.targets
        ]
        self._stubs = [pb_grpc.JacobianServiceStub(channel) for channel in self._channels]
        self._channel, self._stub = self._channels[0], self._stubs[0]
        self._next_replica = 0  # where the next unpinned call starts (several targets)
        self._whole: set[tuple] = set()  # Jacobians too small to split (by jacobian_key)
        self._known_ids: set[str] = set()
        self._lock = threading.Lock()  # guards _known_ids across threads (sync client)
        self._result_bytes: dict[tuple, int] = {}  # Jacobian sizes seen, by jacobian_key
        self._server_limit: int | None = None  # the server's message limit, once asked

    def _options(
        self,
        timeout: float | None = UNSET,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> CallOptions:
        """A call's options: its arguments over the client's defaults."""
        return CallOptions(
            self.timeout if timeout is UNSET else timeout,
            (*self._settings.metadata, *((str(k), str(v)) for k, v in metadata)),
            self.compression if compression is None else compression,
        )

    def _retry_wait(self, error: JacserveError, attempt: int, deadline: float | None) -> float:
        """Seconds to wait before try ``attempt + 1``; raises ``error`` when none is due."""
        wait = self.retry.wait(error, attempt)
        late = deadline is not None and time.monotonic() + wait >= deadline
        if late or not self.retry.should_retry(error, attempt):
            raise error
        return wait

    def _unlabelled_size_refusal(self, error: JacserveError, request: Any) -> int | None:
        """The bytes of ``request``'s largest message when ``error`` may be gRPC's own
        refusal of it for its size (RESOURCE_EXHAUSTED without details); else ``None``.
        A request stream's factory says its size in ``largest_message_bytes``."""
        if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED or error.reason:
            return None
        if callable(request):
            return getattr(request, "largest_message_bytes", None)
        return int(request.ByteSize())

    def _labelled_refusal(self, error: JacserveError, size: int) -> JacserveError:
        """``error`` (gRPC's own RESOURCE_EXHAUSTED of a request of ``size`` bytes) as the
        MESSAGE_TOO_LARGE it is when the request is above the client's or the server's
        known message limit; else ``error`` as it came: gRPC's concurrency limit
        (``--max-concurrent-rpcs``), which :class:`RetryPolicy` retries by default.

        gRPC sends both refusals without details; the sizes, not the message, tell them apart.
        """
        limit = self._settings.max_message_bytes
        if self._server_limit is not None:
            limit = min(limit, self._server_limit)
        if size <= limit:
            return error
        return ResourceExhausted(
            f"the request has {size} bytes, above the message limit of {limit} bytes "
            f"(the smaller of the client's max_message_bytes and the server's "
            f"--max-message-bytes); send smaller inputs ({error.message})",
            request_id=error.request_id,
            reason="MESSAGE_TOO_LARGE",
            metadata={"bytes_needed": str(size), "limit_bytes": str(limit)},
        )

    def _take_turn(self) -> int:
        """The replica for the next unpinned call (round robin over the targets)."""
        with self._lock:
            index = self._next_replica
            self._next_replica = (index + 1) % len(self._stubs)
        return index

    def _after_failure(
        self, error: JacserveError, attempt: int, deadline: float | None, index: int
    ) -> tuple[float, int]:
        """(seconds to wait, replica) for try ``attempt + 1`` after a try on ``index``
        failed: with several targets the next replica at once, a wait only after every
        replica failed. Raises ``error`` when no try is due."""
        wait = self._retry_wait(error, attempt, deadline)
        if (attempt + 1) % len(self._stubs):
            wait = 0.0
        return wait, (index + 1) % len(self._stubs)

    def _lanes(self, shards: int | None) -> int:
        """Concurrent windows for splitting a Jacobian (1: no splitting)."""
        if shards is not None:
            if shards < 1:
                raise ValueError(f"shards must be >= 1; got {shards}")
            return shards
        if len(self._stubs) > 1:
            return len(self._stubs)
        return resolved_addresses(self.target)

    def _splitter(self, plan: Any, lanes: int, always: bool, call: Any) -> ShardedJacobian | None:
        """What splits a planned Jacobian over the replicas; ``None`` when the plan says it
        is too small to gain (unless ``always``). Needs ``_server_limit`` known."""
        if not always and not worth_splitting(plan, lanes):
            return None
        assert self._server_limit is not None
        limit = min(self._settings.max_message_bytes, self._server_limit)
        return ShardedJacobian(call, self.targets, lanes, limit)

    def _remember(self, key: tuple, size: int | None) -> None:
        """Record a Jacobian's size for the stream policy (``None``: not assembled)."""
        if size is not None:
            self._result_bytes[key] = size

    def _needs_stream(self, key: tuple) -> bool | None:
        """Whether a Jacobian must stream: ``True`` (unknown size or too big for one message),
        ``False``, or ``None`` when the server's limit must be asked first."""
        size = self._result_bytes.get(key)
        if size is None:
            return True
        if self._server_limit is None:
            return None
        return size > min(self._settings.max_message_bytes, self._server_limit) // 2
