"""A compile worker's job: build the programs a request asks for, time them as served.

A compile worker is an ordinary worker of one archive (same sandbox, except that it may
run the C++ toolchain) that the frontend forks when a serving worker requests a compiled
program (see NOTE: [Compiled derivative programs] in
:mod:`jacserve.server.engine.compiled`). It gets one ``{"op": "compile"}`` message per
*recipe* — a request of the signature to compile, as the client sent it — then
``{"op": "promote"}`` once done, after which it serves like any other worker, with its
programs ready and fork/exec refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from jacserve.server import errors
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.worker.handlers import DerivativeHandlers
from jacserve.server.worker.operations import DERIVATIVE_REQUESTS, STREAMING_REQUESTS
from jacserve.server.worker.sandbox import seccomp

__all__ = ["compile_recipe", "drop_exec", "report_requests"]

_TIMING_ROUNDS = 7
_FEW_ROUNDS = 3  # for requests of over _LONG_SECONDS: the medians settle sooner
_LONG_SECONDS = 0.5
_UNBOUNDED = float("inf")


def report_requests(handlers: DerivativeHandlers) -> list[str]:
    """Keys whose compiled programs the last request asked for (for the frontend).

    Keys are reported as text: the frontend only compares them.
    """
    return [repr(key) for p in handlers.compiled_programs() for key in p.take_requests()]


def compile_recipe(handlers: DerivativeHandlers, op: str, payload: bytes) -> dict[str, Any]:
    """Answer one recipe eagerly, build what it requests, and keep each program only if
    the whole request handler ran ``min_speedup`` times faster with it — all in a thread
    at the lowest CPU priority (Linux sets niceness per thread, so the thread that serves
    after promotion keeps its own), so that neither building nor timing takes CPU from
    the serving workers.

    Returns:
        ``{"outcomes": [{"key", "outcome", "detail", "seconds"}, ...]}`` with outcome
        ``ready``, ``slower`` or ``failed``.
    """
    return _at_lowest_priority(lambda: _compile(handlers, op, payload))


def _compile(handlers: DerivativeHandlers, op: str, payload: bytes) -> dict[str, Any]:
    serve = _server_of(handlers, op, payload)
    serve()  # eager: counts the key and requests its program
    results = []
    for programs in handlers.compiled_programs():
        for built in programs.build_requested():
            programs.take_requests()  # built here; nothing for the frontend to do
            outcome, detail = built.outcome, built.detail
            if outcome == "built":
                outcome, detail = _measure(programs, built.key, serve)
            results.append(
                {"key": repr(built.key), "outcome": outcome, "detail": detail,
                 "seconds": built.seconds}
            )  # fmt: skip
    return {"outcomes": results}


def _server_of(handlers: DerivativeHandlers, op: str, payload: bytes) -> Callable[[], object]:
    """Answering the recipe's request the way a serving worker would (streams read out)."""
    if op in STREAMING_REQUESTS:
        request = STREAMING_REQUESTS[op].FromString(payload)
        return lambda: list(handlers.stream_jacobian(request, _UNBOUNDED))
    if op not in DERIVATIVE_REQUESTS:
        raise errors.InvalidArgument(f"a compile recipe must be a derivative request, not {op!r}")
    request = DERIVATIVE_REQUESTS[op].FromString(payload)
    return lambda: handlers.handle(op, request, _UNBOUNDED)


def _measure(
    programs: CompiledPrograms, key: Hashable, serve: Callable[[], object]
) -> tuple[str, str]:
    """Time the request handler with and without the program, alternately (so that the
    machine's load drifts into both alike), and settle the program on the medians."""
    eager, compiled = [], []
    started = time.perf_counter()
    serve()  # one unmeasured run of each path
    long = time.perf_counter() - started > _LONG_SECONDS
    with programs.eager_only():
        serve()
    for _ in range(_FEW_ROUNDS if long else _TIMING_ROUNDS):
        started = time.perf_counter()
        serve()
        compiled.append(time.perf_counter() - started)
        with programs.eager_only():
            started = time.perf_counter()
            serve()
            eager.append(time.perf_counter() - started)
    compiled_seconds, eager_seconds = statistics.median(compiled), statistics.median(eager)
    outcome = programs.settle_measured(key, compiled_seconds, eager_seconds)
    return outcome, (
        f"compiled {compiled_seconds * 1e3:.3f} ms vs eager {eager_seconds * 1e3:.3f} ms "
        "per request"
    )


def _at_lowest_priority(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()`` run in a thread of its own at nice 19."""
    result: list[dict[str, Any]] = []
    failure: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):  # best effort: Linux threads only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="jacserve-compile")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def drop_exec() -> str:
    """Refuse fork and exec from now on (a promoted compile worker serves without them).

    seccomp filters only ever add restrictions, so this one stacks on the worker's own.
    """
    if sys.platform != "linux":
        return "no seccomp here"
    return seccomp.install_filter(ctypes.CDLL(None, use_errno=True), allow_exec=False)
