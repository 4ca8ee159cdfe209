"""The frontend's pool of worker processes: dispatch, deadlines, crashes and restarts.

Each request takes an idle worker (waiting in a bounded queue if none is idle), sends it
the serialized request and waits for the reply until the call's deadline. A worker that
overruns the deadline is killed and replaced and the caller gets
:class:`~jacserve.server.errors.DeadlineExceeded`; one that dies (segfault, out of memory,
CPU limit) costs only its own request, with an error that says what happened. Workers
are started in parallel; a replacement starts in the background while the others serve.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from jacserve.server import errors
from jacserve.server.worker.protocol import Channel, ProtocolError
from jacserve.server.worker.settings import WorkerSettings

__all__ = ["WorkerPool"]

_LOG = logging.getLogger("jacserve.server.workers")
_POLL_SECONDS = 0.05
_AFFINITY_MODELS = 16
_SECRET_VARIABLES = ("JACSERVE_AUTH_TOKEN", "JACSERVE_AUTH_TOKEN_FILE", "JACSERVE_TLS_KEY")
_ERRORS: dict[str, type[errors.JacserveError]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidArgument,
        errors.ModelExecutionError,
        errors.NotFound,
        errors.ResourceExhausted,
        errors.FailedPrecondition,
        errors.DeadlineExceeded,
    )
}


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    channel: Channel
    models: list[str] = field(default_factory=list)  # most recent last: routing affinity

    def served(self, model_id: str) -> None:
        if model_id in self.models:
            self.models.remove(model_id)
        self.models.append(model_id)
        del self.models[:-_AFFINITY_MODELS]


class WorkerPool:
    """``size`` worker processes serving requests one at a time each.

    Args:
        settings: what every worker gets (its ``scratch_dir`` is the root of theirs).
        size: number of workers.
        max_queue: requests that may wait for a worker; more get RESOURCE_EXHAUSTED.
        on_event: called with ``("queue_wait", seconds)``, ``("restart", reason)`` and
            ``("busy", count)`` for the metrics.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        size: int,
        *,
        max_queue: int,
        on_event: Callable[[str, Any], None] = lambda kind, value: None,
    ) -> None:
        self._settings = settings
        self._size = size
        self._max_queue = max_queue
        self._on_event = on_event
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._idle_changed = threading.Condition(self._lock)
        self._waiting = 0
        self._busy = 0
        self._closed = threading.Event()
        self._workers: dict[int, _Worker] = {}
        self._starting: set[subprocess.Popen[bytes]] = set()  # spawned, not yet ready

    @property
    def size(self) -> int:
        """Number of worker processes."""
        return self._size

    def pids(self) -> list[int]:
        """Process ids of the live workers, by index."""
        with self._lock:
            return [w.process.pid for _, w in sorted(self._workers.items())]

    def start(self) -> None:
        """Start every worker and return once all are ready.

        Raises:
            RuntimeError: a worker could not start (its error is in the log).
        """
        threads = [
            threading.Thread(target=self._start_worker, args=(i,), daemon=True)
            for i in range(self._size)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(self._workers) != self._size:
            self.close()
            raise RuntimeError("worker processes failed to start; see the log above")

    def _start_worker(self, index: int) -> bool:
        if self._closed.is_set():
            return False
        scratch = os.path.join(self._settings.scratch_dir, f"worker-{index}")
        shutil.rmtree(scratch, ignore_errors=True)
        os.makedirs(scratch)
        settings = replace(self._settings, scratch_dir=scratch)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}
        env.update(
            TMPDIR=scratch,
            TORCHINDUCTOR_CACHE_DIR=os.path.join(scratch, "inductor"),
            OMP_NUM_THREADS=str(max(1, settings.torch_threads)),
        )
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # no cwd on sys.path
        command = [sys.executable, *safe_path, "-m", "jacserve.server.worker.process"]
        try:
            with self._lock:  # close() kills what is starting: its scratch folder goes away
                if self._closed.is_set():
                    return False
                process = subprocess.Popen(
                    [*command, str(child.fileno()), settings.to_json()],
                    pass_fds=(child.fileno(),),
                    env=env,
                    cwd=scratch,
                    stdin=subprocess.DEVNULL,
                )
                self._starting.add(process)
        finally:
            child.close()
        parent.settimeout(120)
        channel = Channel(parent)
        try:
            header, _ = channel.receive(max_payload_bytes=0)
            if not header.get("ready"):
                raise ProtocolError(f"unexpected first message {header}")
        except (OSError, EOFError, ProtocolError) as exc:
            if not self._closed.is_set():
                _LOG.error("worker %d did not start: %s (exit code %s)", index, exc, process.poll())
            process.kill()
            process.wait()
            channel.close()
            with self._lock:
                self._starting.discard(process)
            return False
        parent.settimeout(None)
        worker = _Worker(index, process, channel)
        with self._lock:
            self._starting.discard(process)
            if self._closed.is_set():
                self._stop_worker(worker)
                return False
            self._workers[index] = worker
        self._release(worker)
        _LOG.info("worker %d ready (pid %d)", index, process.pid)
        return True

    def _replace(self, worker: _Worker, reason: str) -> None:
        """Kill ``worker`` and start its successor in the background (once per worker)."""
        self._stop_worker(worker, kill=True)
        with self._lock:
            current = self._workers.get(worker.index) is worker
            if current:
                del self._workers[worker.index]
        if not current or self._closed.is_set():
            return
        self._on_event("restart", reason)

        def restart() -> None:
            delay = 0.5
            while not self._closed.is_set() and not self._start_worker(worker.index):
                time.sleep(delay)
                delay = min(delay * 2, 30)

        threading.Thread(
            target=restart, name=f"jacserve-restart-{worker.index}", daemon=True
        ).start()

    @staticmethod
    def _stop_worker(worker: _Worker, *, kill: bool = False) -> None:
        if kill and worker.process.poll() is None:
            worker.process.kill()
        worker.channel.close()
        try:
            worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()

    def _release(self, worker: _Worker) -> None:
        with self._idle_changed:
            self._idle.append(worker)
            self._idle_changed.notify()

    def _pick(self, model_id: str | None) -> _Worker:
        """The idle worker that served ``model_id`` most recently, else the longest idle;
        caller holds the lock and ``self._idle`` is not empty."""
        chosen = self._idle[0]
        if model_id is not None:
            for worker in self._idle:
                if model_id in worker.models:
                    chosen = worker
                    break
        self._idle.remove(chosen)
        return chosen

    def _acquire(
        self, model_id: str | None, deadline: float, cancelled: Callable[[], bool]
    ) -> _Worker:
        began = time.monotonic()
        with self._idle_changed:
            if not self._idle and self._waiting >= self._max_queue:
                raise errors.ResourceExhausted(
                    f"all {self._size} workers are busy and {self._waiting} requests are "
                    "already queued (--max-queue); retry with backoff or add replicas"
                )
            self._waiting += 1
            try:
                while True:
                    if self._closed.is_set():
                        raise errors.FailedPrecondition(
                            "the server is shutting down; retry on another replica"
                        )
                    if self._idle:
                        worker = self._pick(model_id)
                        if worker.process.poll() is None:
                            return worker
                        self._lock.release()
                        try:
                            self._replace(worker, "exited while idle")
                        finally:
                            self._lock.acquire()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or cancelled():
                        raise errors.DeadlineExceeded(
                            f"no worker became free within the deadline ({time.monotonic() - began:.2f}s "
                            f"queued behind {self._size} busy workers); nothing was computed"
                        )
                    self._idle_changed.wait(min(remaining, _POLL_SECONDS * 4))
            finally:
                self._waiting -= 1
                self._on_event("queue_wait", time.monotonic() - began)

    def call(
        self,
        header: dict[str, Any],
        payload: bytes | None,
        *,
        deadline: float,
        cancelled: Callable[[], bool] = lambda: False,
        loading: bool = False,
    ) -> tuple[dict[str, Any], bytes | None]:
        """Run one operation on a worker; returns the reply header and payload.

        Args:
            header: the operation (``op`` and its fields; ``model_id`` routes the call to
                a worker that has the model loaded, when one is idle).
            payload: the serialized request, if any.
            deadline: ``time.monotonic()`` by which the answer is due.
            cancelled: polled while waiting; True kills the worker as for a deadline.
            loading: the operation loads an archive, so a crash blames the archive.

        Raises:
            JacserveError: the worker's own error, or what its death means.
        """
        parts = self._run(header, payload, deadline, cancelled, loading)
        reply, body = next(parts)
        if reply.get("more"):
            parts.close()
            raise errors.WorkerFailed(f"{header.get('op')} answered with a stream")
        return reply, body

    def stream(
        self,
        header: dict[str, Any],
        payload: bytes | None,
        *,
        deadline: float,
        cancelled: Callable[[], bool] = lambda: False,
        summary: dict[str, Any] | None = None,
    ) -> Iterator[bytes]:
        """Run a streaming operation; yields each message's payload as it arrives and
        puts the final reply header (mode, passes) into ``summary``.

        Closing the iterator early (the caller went away) stops and replaces the worker.
        """
        for reply, body in self._run(header, payload, deadline, cancelled, loading=False):
            if reply.get("more"):
                yield body or b""
            elif summary is not None:
                summary.update(reply)

    def _run(
        self,
        header: dict[str, Any],
        payload: bytes | None,
        deadline: float,
        cancelled: Callable[[], bool],
        loading: bool,
    ) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """Every reply of one operation, the last one without ``more``; raises its error."""
        model_id = header.get("model_id")
        worker = self._acquire(model_id, deadline, cancelled)
        with self._lock:
            self._busy += 1
            self._on_event("busy", self._busy)
        began, done = time.monotonic(), False
        try:
            worker.channel.send({**header, "deadline": deadline}, payload)
            while True:
                reply, body = self._await_reply(worker, deadline, cancelled, loading, began)
                if not reply.get("more"):
                    break
                yield reply, body
                if not reply.get("last"):
                    worker.channel.send({"op": "next"})  # the arena is free for the next part
            done = True
        except (OSError, EOFError, ProtocolError) as exc:
            done = True  # _died replaces the worker
            raise self._died(worker, exc, loading) from None
        finally:
            with self._lock:
                self._busy -= 1
                self._on_event("busy", self._busy)
            if not done and self._workers.get(worker.index) is worker:
                self._replace(worker, "abandoned stream")  # still sending to no one
        if model_id:
            worker.served(model_id)
        self._release(worker)
        if not reply.get("ok"):
            error = _ERRORS.get(str(reply.get("error")), errors.WorkerFailed)
            raise error(str(reply.get("message", "the worker failed without a message"))[:4000])
        yield reply, body

    def _await_reply(
        self,
        worker: _Worker,
        deadline: float,
        cancelled: Callable[[], bool],
        loading: bool,
        began: float,
    ) -> tuple[dict[str, Any], bytes | None]:
        """The worker's next message; past the deadline the worker is replaced and this raises."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or cancelled():
                self._replace(worker, "deadline")
                raise errors.DeadlineExceeded(
                    f"the request ran {time.monotonic() - began:.2f}s, past its deadline; its "
                    "worker was stopped and replaced. Raise the timeout or use a smaller "
                    "problem (if the model loops forever, fix the model)"
                )
            ready, _, _ = select.select([worker.channel], [], [], min(remaining, _POLL_SECONDS))
            if ready:
                return worker.channel.receive(
                    max_payload_bytes=self._settings.max_message_bytes + (1 << 20)
                )

    def _died(self, worker: _Worker, exc: BaseException, loading: bool) -> errors.JacserveError:
        try:
            code = worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None  # alive but speaking nonsense: a protocol error
        self._replace(worker, "crash" if code is not None else "protocol error")
        how = _describe_exit(code) if code is not None else f"protocol error: {exc}"
        if code == -signal.SIGXCPU:
            return errors.ResourceExhausted(
                f"the request used more than {self._settings.cpu_seconds:g} CPU seconds, the "
                "per-request limit (--worker-cpu-seconds); its worker was stopped"
            )
        if code == -signal.SIGKILL:
            return errors.ResourceExhausted(
                "the worker running this request was killed (SIGKILL), most likely by the "
                "kernel for using too much memory; use smaller inputs or a memory budget "
                "(options.max_memory_bytes)"
            )
        if loading:
            return errors.InvalidArgument(
                f"loading the archive crashed its worker ({how}); the archive is malformed or "
                "hostile and was not registered"
            )
        return errors.WorkerFailed(
            f"the worker running this request crashed ({how}); the model is faulty on these "
            "inputs. "
            "A new worker was started and other requests are unaffected"
        )

    def close(self) -> None:
        """Stop every worker (they exit when their socket closes)."""
        self._closed.set()
        with self._idle_changed:
            self._idle_changed.notify_all()
            workers = list(self._workers.values())
            self._workers.clear()
        with self._lock:
            for process in self._starting:
                process.kill()
        for worker in workers:
            self._stop_worker(worker)


def _describe_exit(code: int) -> str:
    """``SIGSEGV`` for a signal, ``exit code 1`` otherwise."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
