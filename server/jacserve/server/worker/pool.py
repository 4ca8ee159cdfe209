"""The frontend's pool of workers: one confined process per archive, forked on demand.

A worker serves exactly one archive for its whole life — it is assumed compromised once
it has loaded it — and one tenant (:mod:`.worker_keys`), so a request goes to an idle
worker of its own model and tenant, or a new one is
forked from the zygote (:mod:`~jacserve.server.worker.zygote`, milliseconds) and handed
the archive. At most ``size`` requests compute at once; at most ``max_warm`` workers live,
idle ones of other models evicted least recently used first. A worker that overruns its
request's deadline is killed and the caller gets
:class:`~jacserve.server.errors.DeadlineExceeded`; one that dies (segfault, out of
memory, CPU limit) costs only its own request. Loading runs in the background up to
``load_seconds`` whatever the callers' deadlines, so short deadlines never make a model
restart forever.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jacserve.server import errors
from jacserve.server.worker.compiling import CompileQueue
from jacserve.server.worker.overruns import Overruns
from jacserve.server.worker.running import RunsOperations
from jacserve.server.worker.settings import WorkerSettings
from jacserve.server.worker.spawner import Zygote, ZygoteError
from jacserve.server.worker.starting import (
    LoadFailure,
    RunningWorker,
    start_worker,
)
from jacserve.server.worker.worker_keys import belongs, model_of, worker_key

__all__ = ["LoadFailure", "WorkerPool", "worker_key"]

_LOG = logging.getLogger("jacserve.server.workers")
_POLL_SECONDS = 0.05


@dataclass(eq=False)
class _Start:
    """A worker being started for a model; ``error`` is set when it failed."""

    model_id: str
    done: bool = False
    error: LoadFailure | None = None


class WorkerPool(RunsOperations):
    """Per-archive worker processes forked from one zygote.

    Args:
        settings: what every worker gets (its ``scratch_dir`` is the root of theirs).
        size: requests that may compute at once.
        max_queue: requests that may wait; more get RESOURCE_EXHAUSTED.
        archive_path: where the stored archive of a model id is.
        max_warm: most live workers (idle ones are kept per archive, LRU-evicted).
        load_seconds: longest an archive may take to load and check.
        compile_seconds: longest a compile worker may take (see :mod:`.compiling`).
        on_event: called with ``("queue_wait", seconds)``, ``("restart", reason)``,
            ``("busy", count)`` and ``("compilation", (outcome, seconds))`` for the metrics.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        size: int,
        *,
        max_queue: int,
        archive_path: Callable[[str], str],
        max_warm: int = 0,
        load_seconds: float = 120.0,
        compile_seconds: float = 600.0,
        on_event: Callable[[str, Any], None] = lambda kind, value: None,
    ) -> None:
        self._settings = settings
        self._size = size
        self._max_warm = max(max_warm or 4 * size, size)
        self._max_queue = max_queue
        self._archive_path = archive_path
        self._load_seconds = load_seconds
        self._on_event = on_event
        self._lock = threading.Lock()
        self._waiters: dict[str, tuple[threading.Condition, int]] = {}  # by model
        self._zygote = Zygote(settings)
        self._idle: list[RunningWorker] = []  # least recently used first
        self._live: dict[int, RunningWorker] = {}
        self._starts: dict[str, _Start] = {}
        self._free_slots = list(range(self._max_warm))
        self._serials = itertools.count()
        self._overruns = Overruns()
        self._waiting = 0
        self._busy = 0
        self._compiling = 0  # compile workers alive (they hold worker slots)
        self._replaced: set[int] = set()  # serials to retire when their request ends
        self._closed = threading.Event()
        self._compile_queue = CompileQueue(
            self, settings.scratch_dir, timeout=compile_seconds, on_event=on_event
        )

    @property
    def settings(self) -> WorkerSettings:
        """What every worker gets."""
        return self._settings

    @property
    def size(self) -> int:
        """Requests that may compute at once."""
        return self._size

    def pids(self, model_id: str | None = None) -> list[int]:
        """Process ids of the live workers (of ``model_id`` only, if given: an archive's
        id for every tenant's, a :func:`worker_key` for one tenant's)."""
        with self._lock:
            return [
                w.process.pid
                for _, w in sorted(self._live.items())
                if model_id is None
                or belongs(w.model_id, model_id, every_tenant="@" not in model_id)
            ]

    def start(self) -> None:
        """Start the zygote (workers are forked when requests need them).

        Raises:
            RuntimeError: the zygote could not start (its error is in the log).
        """
        os.chmod(self._settings.scratch_dir, 0o711)  # workers of other uids reach their folders
        try:
            self._zygote.start()
        except ZygoteError as exc:
            raise RuntimeError(f"worker processes failed to start: {exc}") from exc

    # -- starting and stopping workers ---------------------------------------------------

    def _begin_start(self, model_id: str) -> _Start | None:
        """Start a worker for ``model_id`` in the background if there is room; caller
        holds the lock."""
        victim = None
        if len(self._live) + len(self._starts) + self._compiling >= self._max_warm:
            if not self._idle:
                return None
            victim = self._idle.pop(0)
            del self._live[victim.serial]
        start = _Start(model_id)
        self._starts[model_id] = start
        # the victim's slot (its uid) passes on once it is dead; live + starting <= max_warm
        slot = victim.slot if victim is not None else self._free_slots.pop(0)
        threading.Thread(
            target=self._run_start,
            args=(start, slot, victim),
            name=f"jacserve-start-{model_id[:8]}",
            daemon=True,
        ).start()
        return start

    def _run_start(self, start: _Start, slot: int, victim: RunningWorker | None) -> None:
        if victim is not None:
            victim.stop()
        worker = None
        try:
            worker = self._fork(start.model_id, slot)
        except LoadFailure as failure:
            start.error = failure
            if failure.crashed:
                self._on_event("restart", "load failure")
        with self._lock:
            start.done = True
            self._starts.pop(start.model_id, None)
            if worker is not None and not self._closed.is_set():
                self._live[worker.serial] = worker
                self._idle.append(worker)
            else:
                self._free_slots.append(slot)
            self._wake(start.model_id, everyone=True)
        if worker is not None and self._closed.is_set():
            worker.stop()
        elif worker is not None:
            _LOG.info("worker for model %s ready (pid %d)", start.model_id, worker.process.pid)

    def _fork(self, key: str, slot: int, compile_dir: str | None = None) -> RunningWorker:
        """A loaded worker for a :func:`worker_key` (told only the archive's id)."""
        for attempt in range(2):
            try:
                worker = start_worker(
                    self._zygote,
                    model_id=model_of(key),
                    archive_path=self._archive_path(model_of(key)),
                    serial=next(self._serials),
                    slot=slot,
                    scratch_root=self._settings.scratch_dir,
                    load_seconds=self._load_seconds,
                    compile_dir=compile_dir,
                )
                worker.model_id = key  # routed by archive and tenant
                return worker
            except ZygoteError as exc:
                if attempt or self._closed.is_set():
                    raise LoadFailure(
                        errors.WorkerFailed(f"no worker could be started: {exc}"), crashed=False
                    ) from exc
                _LOG.error("the zygote is gone (%s); starting a new one", exc)
                self._zygote.close()
                self._zygote = Zygote(self._settings)
                try:
                    self._zygote.start()
                except ZygoteError:
                    continue
        raise AssertionError("unreachable")

    def _retire(self, worker: RunningWorker, reason: str | None) -> int | None:
        """Stop a worker for good (outside the lock); ``reason`` counts it as a restart."""
        with self._lock:
            owned = self._live.pop(worker.serial, None) is not None
            self._replaced.discard(worker.serial)
        code = worker.stop()
        with self._lock:
            if owned:  # retired twice (a replaced worker that died busy): one slot back
                self._free_slots.append(worker.slot)
            self._wake(None)
        if reason is not None and not self._closed.is_set():
            self._on_event("restart", reason)
        return code

    # -- compile workers (see :mod:`.compiling`) -------------------------------------------

    def fork_compile_worker(self, model_id: str, directory: str) -> RunningWorker | None:
        """A loaded compile worker in a free slot (evicting an idle worker if needed), or
        ``None`` while every slot is busy.

        Raises:
            LoadFailure: the archive did not load.
        """
        with self._lock:
            if self._closed.is_set():
                return None
            victim = None
            if len(self._live) + len(self._starts) + self._compiling >= self._max_warm:
                if not self._idle:
                    return None
                victim = self._idle.pop(0)
                del self._live[victim.serial]
            slot = victim.slot if victim is not None else self._free_slots.pop(0)
            self._compiling += 1
        if victim is not None:
            victim.stop()
        try:
            return self._fork(model_id, slot, compile_dir=directory)
        except LoadFailure:
            with self._lock:
                self._compiling -= 1
                self._free_slots.append(slot)
            raise

    def promote(self, worker: RunningWorker, replaces: int | None) -> None:
        """Let a compile worker serve; the worker it replaces retires once idle."""
        with self._lock:
            self._compiling -= 1
            if self._closed.is_set():
                retire = [worker]
            else:
                self._live[worker.serial] = worker
                self._idle.append(worker)
                retire = [w for w in self._idle if w.serial == replaces]
                if not retire and replaces in self._live:
                    self._replaced.add(replaces)
                self._idle = [w for w in self._idle if w.serial != replaces]
                self._wake(worker.model_id)
        for old in retire:
            self._retire(old, reason=None)
        _LOG.info("compile worker for model %s now serves it", worker.model_id)

    def discard(self, worker: RunningWorker) -> None:
        """Stop a compile worker that will not serve."""
        worker.stop()
        with self._lock:
            self._compiling -= 1
            self._free_slots.append(worker.slot)
            self._wake(None)

    def forget(self, key: str, *, every_tenant: bool = False) -> None:
        """Stop the idle workers of a deleted model (a :func:`worker_key`; with
        ``every_tenant``, every tenant's of its archive) and drop its compiled programs."""
        self._compile_queue.forget(key, every_tenant=every_tenant)
        with self._lock:
            idle = [w for w in self._idle if belongs(w.model_id, key, every_tenant=every_tenant)]
            self._idle = [w for w in self._idle if w not in idle]
        for worker in idle:
            self._retire(worker, reason=None)

    # -- dispatch -------------------------------------------------------------------------

    def _computing(self) -> tuple[int, int]:
        return self._busy, self._compiling

    def _take_idle(self, model_id: str) -> RunningWorker | None:
        for worker in reversed(self._idle):  # most recently used first
            if worker.model_id == model_id:
                self._idle.remove(worker)
                return worker
        return None

    def _acquire(
        self, model_id: str, deadline: float, cancelled: Callable[[], bool]
    ) -> RunningWorker:
        began = time.monotonic()
        joined: _Start | None = None
        with self._lock:
            if self._waiting >= self._max_queue:
                raise errors.ResourceExhausted(
                    f"{self._busy} requests are computing and {self._waiting} are already "
                    "queued (--max-queue); retry with backoff or add replicas",
                    reason=errors.Reason.QUEUE_FULL,
                    retry_after=0.2,
                    computing=self._busy,
                    queued=self._waiting,
                    max_queue=self._max_queue,
                )
            self._waiting += 1
            condition, count = self._waiters.get(model_id, (threading.Condition(self._lock), 0))
            self._waiters[model_id] = (condition, count + 1)
            try:
                while True:
                    if self._closed.is_set():
                        raise errors.FailedPrecondition(
                            "the server is shutting down; retry on another replica",
                            reason=errors.Reason.SERVER_SHUTTING_DOWN,
                            retry_after=0.1,
                        )
                    if joined is not None and joined.done and joined.error is not None:
                        raise joined.error
                    if self._busy < self._size:
                        worker = self._take_idle(model_id)
                        if worker is not None:
                            if worker.process.poll() is not None:
                                self._lock.release()
                                try:
                                    self._retire(worker, "exited while idle")
                                finally:
                                    self._lock.acquire()
                                continue
                            self._busy += 1
                            self._on_event("busy", self._busy)
                            return worker
                        running = self._starts.get(model_id)
                        joined = running or self._begin_start(model_id) or joined
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or cancelled():
                        raise errors.DeadlineExceeded(
                            f"no worker for this model was free within the deadline "
                            f"({time.monotonic() - began:.2f}s); nothing was computed. A "
                            "model's first request also waits for its archive to load"
                        )
                    condition.wait(min(remaining, _POLL_SECONDS * 4))
            finally:
                self._waiting -= 1
                count = self._waiters[model_id][1] - 1
                if count:
                    self._waiters[model_id] = (condition, count)
                else:
                    del self._waiters[model_id]
                self._on_event("queue_wait", time.monotonic() - began)

    def _release(self, worker: RunningWorker) -> None:
        with self._lock:
            self._busy -= 1
            self._on_event("busy", self._busy)
            replaced = worker.serial in self._replaced
            self._replaced.discard(worker.serial)
            if worker.serial in self._live and not replaced:
                self._idle.append(worker)  # most recently used last: LRU order
            self._wake(worker.model_id)
        if replaced:
            self._retire(worker, reason=None)  # a compiled worker serves its archive now

    def _wake(self, model_id: str | None, *, everyone: bool = False) -> None:
        """Wake a waiter of ``model_id`` (all of them with ``everyone``) and, while a
        request may start, one waiter of another model; caller holds the lock. Waiters
        also look again every 0.2 s, so a wake-up too few costs time, never a hang."""
        if model_id in self._waiters:
            condition = self._waiters[model_id][0]
            condition.notify_all() if everyone else condition.notify()
        if self._busy < self._size:
            other = next((m for m in self._waiters if m != model_id), None)
            if other is not None:
                self._waiters[other][0].notify()

    def describe(
        self, model_id: str, *, deadline: float, cancelled: Callable[[], bool] = lambda: False
    ) -> bytes:
        """The serialized ModelInfo of an archive, loading it in a worker if none has.

        Raises:
            LoadFailure: the archive was refused or its loader crashed or hung.
            JacserveError: no worker in time, or shutting down.
        """
        with self._lock:
            known = next((w.info for w in self._live.values() if w.model_id == model_id), None)
        if known is not None:
            return known
        worker = self._acquire(model_id, deadline, cancelled)
        self._release(worker)
        return worker.info

    def close(self) -> None:
        """Stop every worker and the zygote."""
        self._closed.set()
        self._compile_queue.close()
        with self._lock:
            for condition, _ in self._waiters.values():
                condition.notify_all()
            workers = list(self._live.values())
            self._live.clear()
            self._idle.clear()
        for worker in workers:
            worker.stop()
        self._zygote.close()
