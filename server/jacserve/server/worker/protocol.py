"""Messages between the frontend and a worker: a JSON header, tensors in shared memory.

Each message is one datagram on a ``SOCK_SEQPACKET`` Unix socket pair: a JSON header of
at most 64 KiB and, when there is a payload (a serialized request or response, whose
tensors are most of it), a ``memfd`` passed as a file descriptor that the receiver maps.
Nothing is pickled in either direction, so a compromised worker can send the frontend
only JSON and bytes, never objects.

>>> import socket
>>> left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
>>> send_message(left, {"op": "ping"}, b"tensor bytes")
>>> receive_message(right, max_payload_bytes=1 << 20)
({'op': 'ping'}, b'tensor bytes')
"""

from __future__ import annotations

import array
import json
import mmap
import os
import socket
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "ProtocolError", "receive_message", "send_message"]

MAX_HEADER_BYTES = 1 << 16
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


def _shared_copy(payload: bytes | memoryview) -> int:
    """An anonymous shared-memory file holding ``payload``."""
    fd = os.memfd_create("jacserve-payload", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, len(payload))
        if payload:
            with mmap.mmap(fd, len(payload)) as region:
                region[:] = payload
        return fd
    except BaseException:
        os.close(fd)
        raise


def send_message(
    sock: socket.socket, header: dict[str, Any], payload: bytes | memoryview | None = None
) -> None:
    """Send one message; ``payload`` travels in shared memory.

    Raises:
        OSError: the peer is gone (``BrokenPipeError`` / ``ConnectionResetError``).
    """
    data = json.dumps(header, separators=(",", ":")).encode()
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {len(data)} bytes is above {MAX_HEADER_BYTES}")
    if payload is None:
        sock.sendmsg([data])
        return
    fd = _shared_copy(payload)
    try:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    finally:
        os.close(fd)


def receive_message(
    sock: socket.socket, *, max_payload_bytes: int
) -> tuple[dict[str, Any], bytes | None]:
    """Receive one message: its header and its payload (or ``None``).

    Raises:
        EOFError: the peer closed its end (for a worker: it exited or was killed).
        ProtocolError: malformed header, too many descriptors or a payload above
            ``max_payload_bytes``.
    """
    data, ancillary, flags, _ = sock.recvmsg(MAX_HEADER_BYTES, _FD_SPACE)
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
        except ValueError:
            raise ProtocolError("message header is not JSON") from None
        if not isinstance(header, dict):
            raise ProtocolError("message header is not a JSON object")
        return header, (_read_shared(fds[0], max_payload_bytes) if fds else None)
    finally:
        for fd in fds:
            os.close(fd)


def _read_shared(fd: int, limit: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > limit:
        raise ProtocolError(f"payload of {size} bytes is above the limit of {limit}")
    if size == 0:
        return b""
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as region:
        return region[:]
