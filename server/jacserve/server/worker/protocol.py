"""Messages between the frontend and a worker: a JSON header, tensors in shared memory.

Each message is one datagram on a ``SOCK_SEQPACKET`` Unix socket pair carrying a JSON
header of at most 64 KiB. A payload (a serialized request or response, whose tensors
are most of it) is written into a shared-memory arena that both processes map — one
``memfd`` per worker, created once and replaced by a larger one (whose descriptor rides
along with the message) only when a payload does not fit. The two sides take turns: the
frontend writes a request, the worker reads it, then writes its response (a streamed
response: one part, then the frontend's ``next``, then the next part; the last part says
so and needs no ``next``). Nothing is
pickled in either direction, so a compromised worker can send the frontend only JSON and
bytes, never objects.

>>> import socket
>>> left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
>>> frontend, worker = Channel(left), Channel(right)
>>> frontend.send({"op": "ping"}, b"tensor bytes")
>>> worker.receive(max_payload_bytes=1 << 20)
({'op': 'ping'}, b'tensor bytes')
"""

from __future__ import annotations

import array
import fcntl
import json
import mmap
import os
import socket
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "Channel", "ProtocolError"]

MAX_HEADER_BYTES = 1 << 16
_MIN_ARENA_BYTES = 1 << 20
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)
_PAYLOAD_KEY = "_payload_bytes"
_FILE_KEY = "_file"
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


class Channel:
    """One end of a frontend–worker connection, with its shared-memory arena.

    Args:
        sock: a connected ``AF_UNIX`` / ``SOCK_SEQPACKET`` socket; the channel owns it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._arena: mmap.mmap | None = None

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket and unmap the arena."""
        self.sock.close()
        if self._arena is not None:
            self._arena.close()
            self._arena = None

    def _map(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if self._arena is not None:
            self._arena.close()
        self._arena = mmap.mmap(fd, size) if size else None

    def send(
        self,
        header: dict[str, Any],
        payload: bytes | memoryview | None = None,
        *,
        file_fd: int | None = None,
    ) -> None:
        """Send one message; ``payload`` is written into the arena.

        ``file_fd`` (a message without payload only) passes an open file descriptor; the
        receiver finds its own copy as ``header["file_fd"]`` and must close it.

        Raises:
            OSError: the peer is gone (``BrokenPipeError`` / ``ConnectionResetError``).
        """
        fds: list[int] = []
        if file_fd is not None:
            if payload is not None:
                raise ValueError("a message carries a payload or a file, not both")
            header = {**header, _FILE_KEY: True}
        if payload is not None:
            header = {**header, _PAYLOAD_KEY: len(payload)}
            if self._arena is None or len(self._arena) < len(payload):
                fd = os.memfd_create("jacserve-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                os.ftruncate(fd, max(_MIN_ARENA_BYTES, 1 << (len(payload) - 1).bit_length()))
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # the peer can rely on its size
                self._map(fd)
                fds.append(fd)
            assert self._arena is not None
            self._arena[: len(payload)] = payload
        data = json.dumps(header, separators=(",", ":")).encode()
        try:
            if len(data) > MAX_HEADER_BYTES:
                raise ProtocolError(f"message header of {len(data)} bytes is above the limit")
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            if file_fd is not None:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [file_fd]))]
            self.sock.sendmsg([data], ancillary if fds or file_fd is not None else [])
        finally:
            for fd in fds:
                os.close(fd)

    def receive(
        self, *, max_payload_bytes: int, accept_file: bool = False
    ) -> tuple[dict[str, Any], bytes | None]:
        """Receive one message: its header and a copy of its payload (or ``None``).

        Raises:
            EOFError: the peer closed its end (for a worker: it exited or was killed).
            ProtocolError: malformed header, more than one descriptor, or a payload
                above ``max_payload_bytes`` or outside the arena.
        """
        data, ancillary, flags, _ = self.sock.recvmsg(MAX_HEADER_BYTES, _FD_SPACE)
        fds = [
            fd
            for level, kind, raw in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in array.array("i", raw[: len(raw) - len(raw) % 4])
        ]
        try:
            if not data and not fds:
                raise EOFError("the peer closed the connection")
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) > 1:
                raise ProtocolError("message truncated or carrying more than one descriptor")
            try:
                header = json.loads(data)
            except (ValueError, RecursionError):  # a header nested 60,000 deep
                raise ProtocolError("message header is not JSON") from None
            if not isinstance(header, dict):
                raise ProtocolError("message header is not a JSON object")
            if header.pop(_FILE_KEY, False):
                if not accept_file:
                    raise ProtocolError("the peer sent a file descriptor where none is taken")
                if len(fds) != 1:
                    raise ProtocolError("a file message without its descriptor")
                header["file_fd"] = os.dup(fds[0])
            elif fds:
                if fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & _SEALS != _SEALS:
                    # a shrinkable mapping would fault (SIGBUS) when the peer cuts it
                    raise ProtocolError("the peer's arena is not sealed against shrinking")
                if os.fstat(fds[0]).st_size > max(max_payload_bytes, _MIN_ARENA_BYTES) * 2:
                    raise ProtocolError("the peer's arena is larger than any allowed payload")
                self._map(fds[0])
        finally:
            for fd in fds:
                os.close(fd)
        size = header.pop(_PAYLOAD_KEY, None)
        if size is None:
            return header, None
        if not isinstance(size, int) or not 0 <= size <= max_payload_bytes:
            raise ProtocolError(f"payload size {size!r} is not in 0..{max_payload_bytes}")
        if size and (self._arena is None or size > len(self._arena)):
            raise ProtocolError("payload lies outside the shared arena")
        return header, (self._arena[:size] if size else b"")
