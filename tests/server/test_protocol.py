"""The frontend–worker channel does not trust its peer: what a compromised worker may
send is refused before it can fault or leak anything in the frontend."""

from __future__ import annotations

import array
import json
import os
import socket

import pytest

from jacserve.server.worker.protocol import Channel, ProtocolError


def _pair() -> tuple[Channel, socket.socket]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(left), right


def _send_raw(sock: socket.socket, header: dict, fd: int) -> None:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sock.sendmsg([json.dumps(header).encode()], rights)


def test_an_arena_the_peer_could_shrink_is_refused():
    frontend, worker = _pair()
    fd = os.memfd_create("shrinkable")  # no seals: truncating it would SIGBUS our reads
    os.ftruncate(fd, 2 << 20)
    _send_raw(worker, {"ok": True, "_payload_bytes": 0}, fd)
    with pytest.raises(ProtocolError, match="not sealed"):
        frontend.receive(max_payload_bytes=1 << 20)
    os.close(fd)


def test_a_file_descriptor_is_refused_where_none_is_taken():
    frontend, worker = _pair()
    read_end, write_end = os.pipe()
    _send_raw(worker, {"ok": True, "_file": True}, read_end)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ProtocolError, match="file descriptor"):
        frontend.receive(max_payload_bytes=1 << 20)
    assert len(os.listdir("/proc/self/fd")) <= before  # nothing kept open
    os.close(read_end), os.close(write_end)


def test_sealed_arenas_and_expected_files_pass():
    frontend, worker_sock = _pair()
    worker = Channel(worker_sock)
    worker.send({"ok": True}, b"x" * (3 << 20))  # a new, sealed, larger arena
    assert frontend.receive(max_payload_bytes=4 << 20)[1] == b"x" * (3 << 20)
    with open(__file__, "rb") as source:
        worker.send({"op": "load"}, file_fd=source.fileno())
    header, _ = frontend.receive(max_payload_bytes=0, accept_file=True)
    with os.fdopen(header["file_fd"], "rb") as received:
        assert received.read(3) == b'"""'
