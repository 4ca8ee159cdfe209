"""The zygote: a process that has imported torch once and forks a fresh worker per archive.

Started by the frontend as ``python -P -m jacserve.server.worker.zygote FD SETTINGS_JSON``
(``FD``: its end of a ``SOCK_SEQPACKET`` control socket). It imports torch and pays
its lazy imports (:func:`warm_up`) without starting any thread — so that forking stays
safe — then answers on the control socket:

- ``{"op": "fork", "scratch_dir": DIR, "slot": K, "role": ROLE}`` with the worker's socket as a file
  descriptor → ``{"forked": PID}`` with a pidfd of the new worker (so the frontend can
  signal it without racing pid reuse). The child becomes
  :func:`~jacserve.server.worker.process.serve_one_archive`: it confines itself before
  it ever sees an archive.
- whenever a worker exits → ``{"exited": PID, "code": CODE}`` (``-N`` for signal N, as
  ``subprocess`` reports it).

The zygote is a child subreaper: a process a compromised (compile) worker left behind is
reparented to it; its whole process group dies when the worker is reaped (workers may not
leave their group), and any other orphan within a second.

A fork costs milliseconds, against a second or more for a new interpreter importing
torch; the zygote dies with the frontend, and its workers die with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pathlib
import select
import signal
import socket
import sys
from dataclasses import replace
from typing import Any

import torch

from jacserve.server.allocator import keep_freed_memory
from jacserve.server.logs import configure_logging
from jacserve.server.worker.output import WorkerOutputs
from jacserve.server.worker.process import serve_one_archive  # imported once, here
from jacserve.server.worker.protocol import Channel
from jacserve.server.worker.sandbox import python_paths
from jacserve.server.worker.sandbox.identity import make_non_dumpable, world_readable
from jacserve.server.worker.settings import WorkerSettings

__all__ = ["main", "warm_up"]

_LOG = logging.getLogger("jacserve.zygote")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_SWEEP_SECONDS = 1.0


def warm_up() -> None:
    """Pay torch's lazy imports before the first request does.

    Calling a TorchScript module imports ``torch._dynamo`` and the first forward-mode
    pass imports the decompositions: 1.5 CPU seconds on the first request of every
    worker (measured on the 2-core CI machine), which also counted against
    ``--worker-cpu-seconds``. Forward and reverse Jacobians of ``tanh`` take both paths.

    >>> warm_up()
    """
    import torch._dynamo  # the first module call imports it otherwise

    point = torch.ones(2)
    torch.func.jacfwd(torch.tanh)(point)
    torch.func.jacrev(torch.tanh)(point)


def _die_with_parent(libc: ctypes.CDLL) -> None:
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child(
    control: Channel,
    wake: tuple[int, int],
    outputs: WorkerOutputs,
    output: int,
    request: dict[str, Any],
    settings: WorkerSettings,
) -> None:
    """In the forked child: become a worker; never returns."""
    code = 1
    try:
        outputs.close_inherited()  # other workers' output is not ours to read
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        control.sock.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake:
            os.close(fd)
        os.setsid()  # its own process group: no group-wide signal reaches the frontend
        _die_with_parent(ctypes.CDLL(None, use_errno=True))
        channel = Channel(socket.socket(fileno=int(request["file_fd"])))
        own = replace(settings, scratch_dir=str(request["scratch_dir"]))
        serve_one_archive(
            channel,
            own,
            slot=int(request["slot"]),
            own_uid=bool(request["own_uid"]),
            # only a compiling server has compile workers (the only role with fork/exec)
            role="compile" if request.get("role") == "compile" and own.compile == "on" else "serve",
        )
        code = 0
    except BaseException:
        _LOG.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _reap(control: Channel, workers: set[int]) -> None:
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        pid = info.si_pid
        if pid in workers:
            # Still a zombie, it holds its pid, so the group of that number is its own:
            # whatever it forked is in it (setsid and setpgid are refused) and dies now.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if pid in workers:  # not an orphan of one (the sweep killed those)
            workers.discard(pid)
            control.send({"exited": pid, "code": _exit_code(status)})


def _children() -> set[int]:
    """This process's children, from ``/proc`` (orphans of workers are reparented here)."""
    own = os.getpid()
    try:
        text = pathlib.Path(f"/proc/{own}/task/{own}/children").read_text()
        return {int(pid) for pid in text.split()}
    except OSError:
        found = set()
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == own:
                    found.add(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return found


def _kill_orphans(workers: set[int]) -> None:
    """A worker's process that outlived it (a compromised worker forked and set up a
    session of its own) is reparented to the zygote, the subreaper; it dies here."""
    for pid in _children() - workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def serve_forks(control: Channel, settings: WorkerSettings, own_uid: bool) -> None:
    """Fork a worker for every request until the control socket closes."""
    read_wake, write_wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    workers: set[int] = set()
    outputs = WorkerOutputs()
    while True:
        ready, _, _ = select.select([control, read_wake, *outputs.fds()], [], [], _SWEEP_SECONDS)
        if read_wake in ready:
            while os.read(read_wake, 512) == 512:
                pass
        for fd in set(ready) & set(outputs.fds()):
            outputs.drain(fd)
        _reap(control, workers)
        _kill_orphans(workers)
        if control not in ready:
            continue
        try:
            request, _ = control.receive(max_payload_bytes=0, accept_file=True)
        except EOFError:
            return
        if request.get("op") != "fork" or "file_fd" not in request:
            continue
        output = outputs.open(pid=0)
        pid = os.fork()
        if pid == 0:
            request["own_uid"] = own_uid
            _child(control, (read_wake, write_wake), outputs, output, request, settings)
        outputs.adopt(output, pid)
        workers.add(pid)
        os.close(int(request["file_fd"]))
        pidfd = os.pidfd_open(pid)
        try:
            control.send({"forked": pid}, file_fd=pidfd)
        finally:
            os.close(pidfd)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m jacserve.server.worker.zygote FD SETTINGS_JSON``."""
    fd_text, settings_json = (argv or sys.argv[1:])[:2]
    settings = WorkerSettings.from_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    libc = ctypes.CDLL(None, use_errno=True)
    _die_with_parent(libc)
    make_non_dumpable(libc)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    control = Channel(socket.socket(fileno=int(fd_text)))
    if settings.allocator == "keep":
        keep_freed_memory()
    warm_up()
    own_uid = os.geteuid() == 0 and world_readable(python_paths())
    control.send({"ready": True, "pid": os.getpid(), "torch": torch.__version__})
    serve_forks(control, settings, own_uid)


if __name__ == "__main__":
    main()
