"""The frontend's compile queue: compiled programs are built in workers of their own.

A serving worker that has answered a signature ``compile_after`` times eagerly says so in
its reply (``"compile": [KEY]``). :class:`CompileQueue` keeps that request as a *recipe*,
forks a *compile worker* for the archive (the same sandbox, plus the C++ toolchain, at
the lowest CPU priority), sends it every recipe of the archive, and waits up to
``timeout`` seconds — no caller's deadline reaches it. The compile worker answers each
recipe eagerly, builds and verifies the program, times the request handler with and
without it, and keeps it only if it is faster (see NOTE: [Compiled derivative programs]
in :mod:`jacserve.server.engine.compiled`). Then it is *promoted*: it drops fork and
exec and takes the place of the serving worker that asked, which is retired once idle.
Meanwhile every request is served eagerly by the workers that were already there, so
no request waits for a compilation.

Recipes whose program ended ``ready`` are kept for the archive: a later compile worker
(for another serving worker of the archive, or after one was evicted) rebuilds them from
inductor's caches in the archive's compile folder. A program that failed, was slower or
timed out is never tried again for that archive, and an archive gets at most 32 tries:
a serving worker is assumed compromised, and one that forged requests for ever new
programs would otherwise keep the queue (and a core, at the lowest priority) busy.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jacserve.server.worker.protocol import ProtocolError
from jacserve.server.worker.starting import LoadFailure, RunningWorker
from jacserve.server.worker.worker_keys import belongs

__all__ = ["CompileQueue", "CompileWorkers"]

_LOG = logging.getLogger("jacserve.server.compile")
_MAX_RECIPES = 8  # per archive, like the programs a worker keeps
_MAX_SETTLED = 32  # programs tried per archive: a worker asking for more is not heard
_MAX_RUNS = 16  # compile workers per archive (a forged repeat of a ready key costs one)
_MAX_UNSERVED = 16
_MAX_RECIPE_BYTES = 4 << 20
_RETRY_SECONDS = 1.0
_MAX_KEY_CHARS = 1000


class CompileWorkers(Protocol):
    """What the compile queue needs of the worker pool."""

    def fork_compile_worker(self, model_id: str, directory: str) -> RunningWorker | None:
        """A loaded compile worker, or ``None`` while every worker slot is taken."""

    def promote(self, worker: RunningWorker, replaces: int | None) -> None:
        """Let ``worker`` serve its archive; retire worker ``replaces`` once idle."""

    def discard(self, worker: RunningWorker) -> None:
        """Stop a compile worker that will not serve."""


@dataclass
class _Archive:
    """What the queue knows of one archive."""

    recipes: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # key: (op, payload)
    settled: dict[str, str] = field(default_factory=dict)  # key: outcome
    unserved: dict[str, str] = field(default_factory=dict)  # key: outcome, not promoted
    replaces: int | None = None  # the serving worker the next compile worker stands in for
    queued: bool = False
    runs: int = 0


def _outcomes(reply: dict[str, Any], known: set[str]) -> dict[str, tuple[str, float]]:
    """A compile worker's outcomes (key → (outcome, seconds)), trusted no further than
    their form: only keys the queue sent, only known outcomes, seconds as a number.

    >>> _outcomes({"outcomes": [{"key": "k", "outcome": "ready", "seconds": 2},
    ...                         {"key": "x", "outcome": "ready"}, "junk"]}, {"k"})
    {'k': ('ready', 2.0)}
    """
    found = {}
    items = reply.get("outcomes")
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or item.get("key") not in known:
            continue
        outcome = item.get("outcome")
        seconds = item.get("seconds")
        found[str(item["key"])] = (
            outcome if outcome in ("ready", "slower", "failed") else "failed",
            float(seconds) if isinstance(seconds, int | float) and 0 <= seconds < 1e6 else 0.0,
        )
    return found


class CompileQueue:
    """Builds compiled programs in compile workers, one at a time, and promotes them.

    Args:
        workers: the pool, which forks and promotes workers.
        directory: where each archive's compile folder (and inductor cache) lives.
        timeout: longest one compile worker may take for all its recipes.
        on_event: called with ``("compilation", (outcome, seconds))`` for the metrics.
    """

    def __init__(
        self,
        workers: CompileWorkers,
        directory: str,
        *,
        timeout: float,
        on_event: Callable[[str, Any], None] = lambda kind, value: None,
    ) -> None:
        self._workers = workers
        self._directory = directory
        self._timeout = timeout
        self._on_event = on_event
        self._lock = threading.Condition()
        self._archives: dict[str, _Archive] = {}
        self._order: list[str] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def requested(
        self, model_id: str, keys: list[str], op: str, payload: bytes | None, worker: int
    ) -> None:
        """Serving worker ``worker`` asks for the programs ``keys`` of a request ``op``."""
        if payload is None or len(payload) > _MAX_RECIPE_BYTES:
            return
        with self._lock:
            archive = self._archives.setdefault(model_id, _Archive())
            if len(archive.settled) >= _MAX_SETTLED or archive.runs >= _MAX_RUNS:
                return  # a compromised worker could otherwise keep the queue busy forever
            wanted = False
            for key in keys:
                if archive.settled.get(key, "ready") != "ready":
                    continue  # failed, slower or timed out here before: never again
                if key in archive.recipes and key not in archive.settled:
                    continue  # being built already
                if key not in archive.recipes and len(archive.recipes) >= _MAX_RECIPES:
                    continue
                archive.recipes.setdefault(key, (op, payload))
                wanted = True
            if not wanted or self._closed:
                return
            archive.replaces = worker
            if not archive.queued:
                archive.queued = True
                self._order.append(model_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="jacserve-compile-queue", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def unserved(self, model_id: str) -> dict[str, str]:
        """Programs of ``model_id`` that ended without a compile worker taking over (timed
        out, crashed, refused): key → outcome, for the serving workers' status.

        >>> CompileQueue(None, "/tmp", timeout=1).unserved("no such model")
        {}
        """
        with self._lock:
            archive = self._archives.get(model_id)
            return dict(archive.unserved) if archive is not None else {}

    def forget(self, key: str, *, every_tenant: bool = False) -> None:
        """Drop what is known of a deleted archive (a worker key; with ``every_tenant``,
        every tenant's of its archive), its caches included."""
        with self._lock:
            keys = [k for k in self._archives if belongs(k, key, every_tenant=every_tenant)]
            for gone in {key, *keys}:
                self._archives.pop(gone, None)
                if gone in self._order:
                    self._order.remove(gone)
        for gone in {key, *keys}:
            shutil.rmtree(self._folder(gone), ignore_errors=True)

    def close(self) -> None:
        """Stop after the current compile worker (which the pool's close kills)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _folder(self, model_id: str) -> str:
        return os.path.join(self._directory, f"compile-{model_id}")

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._order or self._closed)
                if self._closed:
                    return
                model_id = self._order.pop(0)
                archive = self._archives[model_id]
                archive.queued = False
                recipes = list(archive.recipes.items())
                replaces, archive.replaces = archive.replaces, None
                archive.runs += 1
            try:
                started = self._run(model_id, recipes, replaces)
            except Exception:  # the queue must outlive any one archive's trouble
                _LOG.exception("compiling for model %s failed", model_id)
                started = True
            if started:  # recipes the run did not reach may be asked for again
                with self._lock:
                    archive = self._archives.get(model_id)
                    for key, _ in recipes if archive is not None else ():
                        if key not in archive.settled:
                            archive.recipes.pop(key, None)
            else:  # no worker slot free: try again shortly
                time.sleep(_RETRY_SECONDS)
                with self._lock:
                    archive = self._archives.get(model_id)
                    if archive is not None and not archive.queued:
                        archive.queued, archive.replaces = True, replaces
                        self._order.append(model_id)

    def _run(
        self, model_id: str, recipes: list[tuple[str, tuple[str, bytes]]], replaces: int | None
    ) -> bool:
        """One compile worker for ``recipes``; False if none could be started yet."""
        try:
            worker = self._workers.fork_compile_worker(model_id, self._folder(model_id))
        except LoadFailure as failure:
            _LOG.warning("no compile worker for model %s: %s", model_id, failure)
            self._settle(model_id, [k for k, _ in recipes], "failed", 0.0)
            self._unserved(model_id, [k for k, _ in recipes], "failed")
            return True
        if worker is None:
            return False
        until = time.monotonic() + self._timeout
        try:
            for key, (op, payload) in recipes:
                began = time.monotonic()
                reply = self._ask(worker, {"op": "compile", "request_op": op}, payload, until)
                if reply is None:  # timed out, died or spoke nonsense: never tried again
                    ended = "timeout" if time.monotonic() >= until else "failed"
                    self._settle(model_id, [key], ended, time.monotonic() - began)
                    self._workers.discard(worker)
                    self._unserved(model_id, [key], ended)
                    return True
                known = {k for k, _ in recipes}
                outcomes = _outcomes(reply, known) if reply.get("ok") else {}
                for built, (outcome, seconds) in outcomes.items():
                    self._settle(model_id, [built], outcome, seconds)
                if reply.get("ok") and key not in outcomes:
                    # the recipe's request asked for no such program there (a forged key)
                    self._settle(model_id, [key], "failed", time.monotonic() - began)
                if not reply.get("ok"):
                    _LOG.warning(
                        "a compile recipe of model %s failed: %s",
                        model_id, str(reply.get("message"))[:400],
                    )  # fmt: skip
                    self._settle(model_id, [key], "failed", time.monotonic() - began)
            promoted = self._ask(worker, {"op": "promote"}, None, until)
            with self._lock:
                forgotten = model_id not in self._archives  # deleted meanwhile
            if promoted is None or not promoted.get("ok") or forgotten:
                self._workers.discard(worker)
                return True
        except BaseException:
            self._workers.discard(worker)
            raise
        self._workers.promote(worker, replaces)
        return True

    def _ask(
        self, worker: RunningWorker, header: dict[str, Any], payload: bytes | None, until: float
    ) -> dict[str, Any] | None:
        """The compile worker's reply, or ``None`` if it died or ran past ``until``."""
        try:
            worker.channel.send(header, payload)
            while True:
                remaining = until - time.monotonic()
                if remaining <= 0 or self._closed:
                    return None
                ready, _, _ = select.select([worker.channel], [], [], min(remaining, 0.5))
                if ready:
                    reply, _ = worker.channel.receive(max_payload_bytes=0)
                    return reply if isinstance(reply, dict) else None
        except (OSError, EOFError, ProtocolError, ValueError) as exc:
            _LOG.warning("compile worker for model %s failed: %s", worker.model_id, exc)
            return None

    def _unserved(self, model_id: str, keys: list[str], outcome: str) -> None:
        with self._lock:
            archive = self._archives.get(model_id)
            if archive is not None:
                for key in keys:  # they travel in request headers: bounded in bytes
                    small = len(json.dumps(key)) <= _MAX_KEY_CHARS
                    if small and len(archive.unserved) < _MAX_UNSERVED:
                        archive.unserved.setdefault(key, outcome)

    def _settle(self, model_id: str, keys: list[str], outcome: str, seconds: float) -> None:
        for _ in keys:
            self._on_event("compilation", (outcome, seconds))
        with self._lock:
            archive = self._archives.get(model_id)
            if archive is None:
                return
            for key in keys:
                archive.settled[key] = outcome
                if outcome != "ready":
                    archive.recipes.pop(key, None)
        _LOG.info("compiled programs of model %s: %s", model_id, outcome)
