"""The frontend's side of the zygote: start it, fork workers from it, learn how they end.

>>> import tempfile
>>> from jacserve.server.worker.settings import WorkerSettings
>>> zygote = Zygote(WorkerSettings(scratch_dir=tempfile.mkdtemp()))
>>> zygote.start()
>>> zygote.alive
True
>>> zygote.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from jacserve.server.worker.protocol import Channel, ProtocolError
from jacserve.server.worker.settings import WorkerSettings

__all__ = ["WorkerProcess", "Zygote", "ZygoteError"]

_LOG = logging.getLogger("jacserve.server.workers")
_PASSED_VARIABLES = re.compile(
    r"(PATH|HOME|USER|LANG|LANGUAGE|TZ|VIRTUAL_ENV|LD_LIBRARY_PATH|CC|CXX|LC_\w+|PYTHON\w*"
    r"|CUDA_\w+|NVIDIA_\w+|OMP_\w+|KMP_\w+|MKL_\w+|OPENBLAS_\w+|GOMP_\w+|TORCH\w*"
    r"|PYTORCH_\w+|TRITON_\w+)"
)
"""Environment variables the zygote (and so every worker) gets; nothing else — tokens,
cloud credentials, service addresses — reaches archive code."""
_START_SECONDS = 120
_FORK_SECONDS = 30


class ZygoteError(RuntimeError):
    """The zygote is gone or did not answer."""


class WorkerProcess:
    """A forked worker, as far as the frontend can see it: ``poll``, ``wait``, ``kill``.

    Signals go through a pidfd, so a recycled pid is never signalled by mistake.
    """

    def __init__(self, pid: int, pidfd: int, zygote: Zygote) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._zygote = zygote

    def poll(self) -> int | None:
        """The exit code (``-N``: killed by signal N), or ``None`` while it runs."""
        return self._zygote.exit_code(self.pid, timeout=0)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
        """
        code = self._zygote.exit_code(self.pid, timeout=timeout)
        if code is None:
            raise TimeoutError(f"worker {self.pid} still runs")
        return code

    def kill(self) -> None:
        """SIGKILL it (nothing happens if it already exited)."""
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close(self) -> None:
        """Release the pidfd and what the zygote reported (once the worker is done with)."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
            self._zygote.forget(self.pid)


class Zygote:
    """The zygote process and the reader thread that hears from it.

    Args:
        settings: what every worker gets; ``scratch_dir`` is the zygote's cwd.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._control: Channel | None = None
        self._fork_lock = threading.Lock()
        self._forked: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._exited = threading.Condition()
        self._dead = threading.Event()

    @property
    def alive(self) -> bool:
        """Whether the zygote still answers."""
        return self._process is not None and not self._dead.is_set()

    def start(self) -> None:
        """Start the zygote and wait until it has imported torch.

        Raises:
            ZygoteError: it did not start (its error is in the log).
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if _PASSED_VARIABLES.fullmatch(k)}
        env.update(
            TMPDIR=self._settings.scratch_dir,
            OMP_NUM_THREADS=str(max(1, self._settings.torch_threads)),
            TORCHINDUCTOR_COMPILE_THREADS="1",  # no compile subprocess pool in a worker
        )
        command = [sys.executable, "-P", "-m", "jacserve.server.worker.zygote"]
        try:
            self._process = subprocess.Popen(
                [*command, str(child.fileno()), self._settings.to_json()],
                pass_fds=(child.fileno(),),
                env=env,
                cwd=self._settings.scratch_dir,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        parent.settimeout(_START_SECONDS)
        self._control = Channel(parent)
        try:
            header, _ = self._control.receive(max_payload_bytes=0)
            if not header.get("ready"):
                raise ProtocolError(f"unexpected first message {header}")
        except (OSError, EOFError, ProtocolError) as exc:
            self.close()
            raise ZygoteError(f"the zygote did not start: {exc}") from exc
        parent.settimeout(None)
        threading.Thread(target=self._listen, name="jacserve-zygote", daemon=True).start()
        _LOG.info("zygote ready (pid %d)", self._process.pid)

    def _listen(self) -> None:
        assert self._control is not None
        try:
            while True:
                header, _ = self._control.receive(max_payload_bytes=0, accept_file=True)
                if "forked" in header:
                    self._forked.put(header)
                elif "exited" in header:
                    with self._exited:
                        self._exits[int(header["exited"])] = int(header["code"])
                        self._exited.notify_all()
        except (OSError, EOFError, ProtocolError, ValueError):
            pass
        finally:
            self._dead.set()
            self._forked.put(None)
            with self._exited:
                self._exited.notify_all()

    def fork(
        self, *, scratch_dir: str, slot: int, role: str = "serve"
    ) -> tuple[WorkerProcess, Channel]:
        """A new worker with its own scratch folder and slot, and the channel to it;
        ``role`` is ``serve`` or ``compile`` (see :func:`~.process.serve_one_archive`).

        Raises:
            ZygoteError: the zygote is gone or did not answer.
        """
        if not self.alive or self._control is None:
            raise ZygoteError("the zygote is not running")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._fork_lock:
                self._control.send(
                    {"op": "fork", "scratch_dir": scratch_dir, "slot": slot, "role": role},
                    file_fd=child.fileno(),
                )
                try:
                    reply = self._forked.get(timeout=_FORK_SECONDS)
                except queue.Empty:
                    reply = None
        except OSError as exc:
            parent.close()
            raise ZygoteError(f"the zygote is gone: {exc}") from exc
        finally:
            child.close()
        if reply is None:
            parent.close()
            raise ZygoteError("the zygote did not fork a worker")
        return WorkerProcess(int(reply["forked"]), int(reply["file_fd"]), self), Channel(parent)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """How worker ``pid`` ended, waiting up to ``timeout`` seconds; ``None``: running.

        A worker whose zygote died is reported as killed (``-SIGKILL``): it died with it.
        """
        with self._exited:
            self._exited.wait_for(
                lambda: pid in self._exits or self._dead.is_set(), timeout=timeout
            )
            if pid in self._exits:
                return self._exits[pid]
            return -signal.SIGKILL if self._dead.is_set() else None

    def forget(self, pid: int) -> None:
        """Drop what is known of worker ``pid`` (it was reaped and is done with)."""
        with self._exited:
            self._exits.pop(pid, None)

    def close(self) -> None:
        """Stop the zygote; its workers die with it."""
        if self._control is not None:
            self._control.close()
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
