"""Attacker code run inside real workers by ``tests/e2e/test_compromised_worker.py``.

A request whose method is ``attack:NAME:ARG:…`` makes the worker run ``NAME`` with the
arguments instead of answering; results go back as an INVALID_ARGUMENT message (JSON).
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import resource
import socket
import time
from typing import Any

from jacserve.server.worker import process
from jacserve.server.worker.operations import DERIVATIVE_REQUESTS, STREAMING_REQUESTS


def _method(header: dict[str, Any], payload: bytes | None) -> str:
    op = str(header.get("request_op" if header.get("op") == "compile" else "op"))
    if payload is None:
        return ""
    if op in STREAMING_REQUESTS:
        return STREAMING_REQUESTS[op].FromString(payload).request.function.method
    if op in DERIVATIVE_REQUESTS:
        return DERIVATIVE_REQUESTS[op].FromString(payload).function.method
    return ""


def _answer(channel: Any, found: dict[str, Any]) -> None:
    channel.send({"ok": False, "error": "InvalidArgument", "message": json.dumps(found)})


def _raw(channel: Any, header: bytes, fd: int | None = None) -> None:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd else []
    channel.sock.sendmsg([header], rights)


def reach(channel: Any, frontend: str, victim: str, archive: str, port: str) -> None:
    """Try everything outside this worker; report what worked."""
    libc = ctypes.CDLL(None, use_errno=True)
    found: dict[str, str] = {}

    def attempt(name: str, action: Any) -> None:
        try:
            action()
            found[name] = "allowed"
        except OSError as exc:
            found[name] = f"denied {exc.errno}"

    targets = ((int(frontend), "frontend"), (int(victim), "victim"), (os.getppid(), "zygote"))
    for pid, who in targets:
        attempt(f"{who}_environ", lambda p=pid: _read(f"/proc/{p}/environ"))
        attempt(f"{who}_mem", lambda p=pid: _read(f"/proc/{p}/mem"))
        attempt(f"{who}_signal", lambda p=pid: os.kill(p, 0))
        attempt(f"{who}_prlimit", lambda p=pid: resource.prlimit(p, resource.RLIMIT_NOFILE))
        attempt(f"{who}_priority", lambda p=pid: os.setpriority(os.PRIO_PROCESS, p, 19))
        attempt(f"{who}_ptrace", lambda p=pid: _check(libc.ptrace(16, p, 0, 0), libc))
    attempt("read_archive", lambda: _read(archive))
    attempt("tcp_to_server", lambda: socket.create_connection(("127.0.0.1", int(port)), 2))
    attempt("renice_my_uid", lambda: os.setpriority(os.PRIO_USER, 0, 19))
    attempt("datagram_pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
    _answer(channel, found)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(1)


def _check(result: int, libc: ctypes.CDLL) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), "refused")


def shrink_arena(channel: Any) -> None:
    """Answer with an arena of our own, then cut it under the frontend (SIGBUS there)."""
    fd = os.memfd_create("attacker")
    os.ftruncate(fd, 2 << 20)
    _raw(channel, json.dumps({"ok": True, "_payload_bytes": 16}).encode(), fd)
    time.sleep(0.05)
    os.ftruncate(fd, 0)
    time.sleep(5)


def send_file(channel: Any) -> None:
    """Answer with a file descriptor the frontend would have to keep."""
    _raw(channel, json.dumps({"ok": True, "_file": True}).encode(), channel.sock.fileno())
    time.sleep(5)


def nested_header(channel: Any) -> None:
    """Answer with a header nested deeper than the frontend's JSON parser can go."""
    _raw(channel, b"[" * 60_000)
    time.sleep(5)


def leave_orphan(channel: Any) -> None:
    """Leave a process behind (in a session of its own if it may), report its pid and
    whether it could leave the worker's session, and die."""
    read, write = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        _answer(channel, {"fork": f"denied {exc.errno}"})
        return
    if pid == 0:
        try:
            os.setsid()
            os.write(write, b"allowed")
        except OSError:
            os.write(write, b"denied")
        time.sleep(120)
        os._exit(0)
    escaped = os.read(read, 16).decode()
    _answer(channel, {"fork": "allowed", "orphan": pid, "setsid": escaped})
    os._exit(1)


def ask_to_compile(channel: Any, *then: str) -> None:
    """Forge a serving worker's request for a compiled program of this very request, so
    that the frontend sends it, as a recipe, to a compile worker (which may fork); the
    compile worker runs the attack named ``then``."""
    channel.send({"ok": False, "error": "InvalidArgument", "message": "forged", "compile": ["f"]})


ATTACKS = {
    "ask_to_compile": ask_to_compile,
    "reach": reach,
    "shrink_arena": shrink_arena,
    "send_file": send_file,
    "nested_header": nested_header,
    "leave_orphan": leave_orphan,
}


def install() -> None:
    """Make every worker obey ``attack:`` requests (after it confined and loaded)."""
    serve = process._serve

    def compromised(channel: Any, handlers: Any, settings: Any, budget: Any, **role: Any) -> None:
        receive = channel.receive

        def obey(**limits: Any) -> Any:
            while True:
                header, payload = receive(**limits)
                method = _method(header, payload)
                if not method.startswith("attack:"):
                    return header, payload
                name, *arguments = method.removeprefix("attack:").split(":")
                if header.get("op") == "compile" and name == "ask_to_compile":
                    name, *arguments = arguments  # the compile worker runs the attack proper
                ATTACKS[name](channel, *arguments)

        channel.receive = obey
        serve(channel, handlers, settings, budget, **role)

    process._serve = compromised
