"""Receiving ``UploadModel`` streams without letting them exhaust the frontend.

Three guards, all before or while the stream is read (see NOTE: [Stalled uploads]):

* :class:`UploadSlots` caps concurrent uploads per client address and in all, so that
  uploads can never hold every RPC thread;
* :func:`idle_limited` cuts a stream that sends nothing for ``idle_seconds``;
* :func:`receive_upload` streams the chunks into the store's staging folder (never whole
  in memory).

NOTE: [Stalled uploads]
A gRPC Python handler reads a client stream through a blocking iterator: a client that
sends two bytes and goes silent holds the handler's thread for good, and nothing inside
that thread can interrupt the wait. So a reader thread pulls the messages and hands them
over one at a time; the handler waits for each with a timeout and, past it, raises
:class:`DeadlineExceeded`, which the service turns into ``context.abort``. Ending the call
completes the pending receive, so the reader's iterator stops too and its thread exits:
the handler's thread is back in the pool at once and no thread is left behind.

>>> list(idle_limited(iter([b"a", b"b"]), idle_seconds=1.0))
[b'a', b'b']
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import grpc

from jacserve.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    archive_checks,
)
from jacserve.server.registry.store import ArchiveStore, StagedArchive
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["UploadSlots", "idle_limited", "peer_host", "receive_upload", "total_upload_slots"]

T = TypeVar("T")


def peer_host(peer: str) -> str:
    """The client's address in a gRPC peer string, without the port.

    >>> peer_host("ipv4:127.0.0.1:50312"), peer_host("ipv6:%5B::1%5D:50312")
    ('127.0.0.1', '::1')
    >>> peer_host("unix:/run/jacserve.sock")
    'unix:/run/jacserve.sock'
    """
    text = urllib.parse.unquote(peer)
    kind, _, address = text.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return text
    host, _, _ = address.rpartition(":")
    return host.strip("[]") or address


def total_upload_slots(max_workers: int) -> int:
    """Concurrent uploads in all: a quarter of the RPC threads, so the rest stay free.

    >>> total_upload_slots(32), total_upload_slots(2)
    (8, 1)
    """
    return max(1, max_workers // 4)


class UploadSlots:
    """Counts uploads in progress and refuses one over a limit before it is read.

    Args:
        per_peer: concurrent uploads from one client address (--max-uploads-per-peer).
        total: concurrent uploads in all (:func:`total_upload_slots`).

    >>> slots = UploadSlots(per_peer=1, total=4)
    >>> with slots.admit("ipv4:10.0.0.7:5000"):
    ...     with slots.admit("ipv4:10.0.0.7:5001"):
    ...         pass  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ResourceExhausted: 10.0.0.7 has 1 upload in progress ...
    """

    def __init__(self, *, per_peer: int, total: int) -> None:
        self.per_peer, self.total = per_peer, total
        self._by_host: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, peer: str) -> Iterator[None]:
        """Hold a slot for the duration of an upload from ``peer`` (``context.peer()``).

        Raises:
            ResourceExhausted: the peer's or the server's uploads are at their limit.
        """
        host = peer_host(peer)
        with self._lock:
            in_progress = sum(self._by_host.values())
            if in_progress >= self.total:
                raise ResourceExhausted(
                    f"the server is receiving {in_progress} uploads, its limit (a quarter of "
                    "--max-workers, so that other calls keep their threads); retry when one "
                    "has finished",
                    reason=Reason.UPLOADS_BUSY,
                    retry_after=1.0,
                )
            mine = self._by_host.get(host, 0)
            if mine >= self.per_peer:
                raise ResourceExhausted(
                    f"{host} has {mine} upload{'s' * (mine != 1)} in progress, the server's "
                    f"limit per client address (--max-uploads-per-peer {self.per_peer}); "
                    "wait for one to finish, then retry",
                    reason=Reason.UPLOADS_BUSY,
                    retry_after=1.0,
                )
            self._by_host[host] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                self._by_host[host] -= 1
                if not self._by_host[host]:
                    del self._by_host[host]


class _Relay(Generic[T]):
    """A reader thread's hand-over of one item at a time (see NOTE: [Stalled uploads])."""

    def __init__(self, items: Iterator[T]) -> None:
        self.ready = threading.Condition()
        self.slot: list[T] = []  # at most one item
        self.ended = False
        self.error: Exception | None = None
        self._closed = False
        self._items = items
        threading.Thread(target=self._read, name="jacserve-upload-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            for item in self._items:
                with self.ready:
                    self.ready.wait_for(lambda: not self.slot or self._closed)
                    if self._closed:
                        return
                    self.slot.append(item)
                    self.ready.notify_all()
        except Exception as exc:  # grpc.RpcError: the caller cancelled or its deadline passed
            with self.ready:
                self.error = exc
                self.ready.notify_all()
            return
        with self.ready:
            self.ended = True
            self.ready.notify_all()

    def close(self) -> None:
        """Let the reader thread exit as soon as its iterator returns."""
        with self.ready:
            self._closed = True
            self.ready.notify_all()


def idle_limited(items: Iterable[T], *, idle_seconds: float) -> Iterator[T]:
    """Yield ``items``, read by a helper thread, giving up on any wait over ``idle_seconds``.

    Closing the generator (or an exception in the consumer) releases the helper thread
    once ``items`` ends; for a gRPC request iterator, that is when the call ends.

    Raises:
        DeadlineExceeded: nothing came for ``idle_seconds``, or the caller cancelled.
    """
    relay = _Relay(iter(items))
    try:
        while True:
            with relay.ready:
                waited = relay.ready.wait_for(
                    lambda: relay.slot or relay.ended or relay.error is not None,
                    timeout=idle_seconds,
                )
                if not waited:
                    raise DeadlineExceeded(
                        f"the upload sent nothing for {idle_seconds:g} s and was cut "
                        "(DEADLINE_EXCEEDED); nothing was kept. Send the archive without "
                        "pauses (the server's --upload-idle-seconds)"
                    )
                if relay.error is not None:
                    if isinstance(relay.error, grpc.RpcError):
                        raise DeadlineExceeded(
                            "the upload was cancelled by its caller or passed its deadline; "
                            "nothing was kept"
                        ) from relay.error
                    raise relay.error
                if not relay.slot:
                    return
                item = relay.slot.pop()
                relay.ready.notify_all()
            yield item
    finally:
        relay.close()


def _chunks(first: pb.UploadModelRequest, rest: Iterator[pb.UploadModelRequest]) -> Iterator[bytes]:
    yield first.chunk
    for message in rest:
        if message.expected_model_id and message.expected_model_id != first.expected_model_id:
            raise InvalidArgument(
                "expected_model_id: expected it on the first message (or the same one on "
                f"every message); got {message.expected_model_id[:80]!r} on a later message "
                f"after {first.expected_model_id[:80]!r}",
                field="expected_model_id",
            )
        yield message.chunk


def receive_upload(
    store: ArchiveStore, requests: Iterable[pb.UploadModelRequest], *, idle_seconds: float
) -> StagedArchive:
    """Stream an ``UploadModel`` call into ``store``'s staging folder, cut when idle.

    The expected model id is the first message's. Commit or discard the result.

    Raises:
        DeadlineExceeded: the stream stalled for ``idle_seconds`` or was cancelled.
        InvalidArgument, ResourceExhausted: from :meth:`ArchiveStore.receive`.

    >>> import tempfile
    >>> store = ArchiveStore(tempfile.mkdtemp(), max_archive_bytes=1 << 20)
    >>> receive_upload(store, [pb.UploadModelRequest(chunk=b"PK")], idle_seconds=1)
    ... # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    InvalidArgument: archive is not a zip file (it starts with bytes 50 4b) ...
    """
    messages = idle_limited(requests, idle_seconds=idle_seconds)
    try:
        first = next(messages, pb.UploadModelRequest())
        with archive_checks():
            return store.receive(_chunks(first, messages), expected_id=first.expected_model_id)
    finally:
        messages.close()
