"""Running one operation on a worker of the pool: send it, wait for the reply within
the deadline, and turn a worker's death or silence into the caller's error.

:class:`RunsOperations` is the part of :class:`~jacserve.server.worker.pool.WorkerPool`
that does this once a worker is acquired; a reply that asks for compiled programs goes to
the pool's compile queue (:mod:`~jacserve.server.worker.compiling`).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator
from typing import Any

from jacserve.server import errors
from jacserve.server.worker.compiling import CompileQueue
from jacserve.server.worker.overruns import Overruns
from jacserve.server.worker.protocol import ProtocolError
from jacserve.server.worker.settings import WorkerSettings
from jacserve.server.worker.starting import ERRORS, RunningWorker, death_error
from jacserve.server.worker.worker_keys import worker_key

__all__ = ["RunsOperations"]

_POLL_SECONDS = 0.05
_DEADLINE_SLACK_SECONDS = 0.25


class RunsOperations:
    """Calls and streams on acquired workers (mixed into the pool, which provides
    ``_acquire``, ``_release`` and ``_retire``)."""

    _settings: WorkerSettings
    _overruns: Overruns
    _compile_queue: CompileQueue

    def _acquire(
        self, model_id: str, deadline: float, cancelled: Callable[[], bool]
    ) -> RunningWorker:
        raise NotImplementedError

    def _release(self, worker: RunningWorker) -> None:
        raise NotImplementedError

    def _retire(self, worker: RunningWorker, reason: str | None) -> int | None:
        raise NotImplementedError

    def _computing(self) -> tuple[int, int]:
        """Requests computing now (this one included) and compile workers building."""
        raise NotImplementedError

    def _threads_now(self) -> int:
        """Intra-op threads offered to a request starting now: the cores shared among the
        requests computing, less one per compile worker building (an OpenMP team that
        shares a core with a compile, even one at nice 19, waits at every barrier:
        measured, a 2000×2000 Jacobian's passes took 527 ms with two threads beside a
        compile against 349 ms with one), so a request alone on an idle server may use
        every core (``--torch-threads`` set by hand fixes the count)."""
        settings = self._settings
        requests, compiles = self._computing()
        shared = (settings.max_threads - compiles) // max(1, requests)
        return max(settings.torch_threads, min(settings.max_threads, shared))

    def call(
        self,
        header: dict[str, Any],
        payload: bytes | None,
        *,
        deadline: float,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> tuple[dict[str, Any], bytes | None]:
        """Run one operation on a worker of ``header["model_id"]``; returns the reply
        header and payload.

        Raises:
            LoadFailure: the model's archive could not be loaded.
            JacserveError: the worker's own error, or what its death means.
        """
        parts = self._run(header, payload, deadline, cancelled)
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

        Closing the iterator early (the caller went away) stops the worker.
        """
        for reply, body in self._run(header, payload, deadline, cancelled):
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
    ) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """Every reply of one operation, the last one without ``more``; raises its error.
        ``header["tenant"]`` picks the tenant's workers and is not sent to the worker."""
        header = dict(header)
        key = worker_key(str(header["model_id"]), str(header.pop("tenant", "")))
        self._overruns.refuse_hopeless(key, deadline)
        worker = self._acquire(key, deadline, cancelled)
        began, done = time.monotonic(), False
        try:
            threads = self._threads_now()
            extra = {"deadline": deadline, "threads": threads}
            if unserved := self._compile_queue.unserved(key):
                extra["unserved"] = unserved  # the worker's status says how they ended
            worker.channel.send({**header, **extra}, payload)
            while True:
                reply, body = self._await_reply(worker, deadline, cancelled, began)
                if not reply.get("more"):
                    break
                yield reply, body
                if not reply.get("last"):
                    worker.channel.send({"op": "next"})  # the arena is free for the next part
            done = True
            self._overruns.finished(key)
            wanted = reply.get("compile")
            if wanted and isinstance(wanted, list) and self._settings.compile == "on":
                keys = [str(k) for k in wanted][:8]
                self._compile_queue.requested(
                    key, keys, str(header.get("op")), payload, worker.serial
                )
        except (OSError, EOFError, ProtocolError) as exc:
            done = True
            raise self._died(worker, exc) from None
        finally:
            if not done and worker.serial in self._live:
                self._retire(worker, "abandoned stream")  # still sending to no one
            self._release(worker)
        if not reply.get("ok"):
            error = ERRORS.get(str(reply.get("error")), errors.WorkerFailed)
            message = str(reply.get("message", "the worker failed without a message"))[:4000]
            raise errors.error_from_reply(error, reply, message)
        yield reply, body

    def _await_reply(
        self,
        worker: RunningWorker,
        deadline: float,
        cancelled: Callable[[], bool],
        began: float,
    ) -> tuple[dict[str, Any], bytes | None]:
        """The worker's next message; past the deadline the worker is stopped and this raises."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or cancelled():
                ran = time.monotonic() - began
                if remaining > _DEADLINE_SLACK_SECONDS:  # the caller cancelled or went away
                    self._retire(worker, "cancelled")
                    raise errors.DeadlineExceeded(
                        f"the caller cancelled the request after {ran:.2f}s; its worker was "
                        "stopped and nothing more is computed for it"
                    )
                self._overruns.overran(worker.model_id, ran)  # a client's own deadline cancels
                self._retire(worker, "deadline")
                raise errors.DeadlineExceeded(
                    f"the request ran {time.monotonic() - began:.2f}s, past its deadline; its "
                    "worker was stopped. Raise the timeout or use a smaller problem (if the "
                    "model loops forever, fix the model)"
                )
            ready, _, _ = select.select([worker.channel], [], [], min(remaining, _POLL_SECONDS))
            if ready:
                return worker.channel.receive(
                    max_payload_bytes=self._settings.max_message_bytes + (1 << 20)
                )

    def _died(self, worker: RunningWorker, exc: BaseException) -> errors.JacserveError:
        try:
            code: int | None = worker.process.wait(timeout=5)
        except TimeoutError:
            code = None  # alive but speaking nonsense: a protocol error
        self._retire(worker, "crash" if code is not None else "protocol error")
        return death_error(code, exc, cpu_seconds=self._settings.cpu_seconds)
