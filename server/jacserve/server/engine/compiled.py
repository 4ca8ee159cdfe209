"""Compiled Jacobian programs: built off the request path, verified, then used.

NOTE: [Compiled derivative programs]
Eager torch.func pays Python and dispatch overhead on every op of every pass; a program
compiled by ``torch.compile`` of ``jacfwd``/``jacrev`` runs a small Jacobian several times
faster (measured here: a 100→100 MLP 0.22 ms compiled against 0.82 ms eager), but costs
seconds to build (2–4 s, 20+ s for the first in a process). So:

1. Requests are answered eagerly. After ``compile_after`` eager Jacobians of one
   (method, input signature, wrt, mode), a job goes to the :class:`ProgramCompiler`, a
   single background thread at the lowest CPU priority.
2. The job makes a traceable module (a torch.export program as loaded; a TorchScript
   module converted with ``TS2EPConverter``), compiles ``jacfwd``/``jacrev`` of it for
   the wrt inputs, runs it on the inputs of the request that triggered it, and compares
   with that request's eager Jacobian (``torch.allclose`` at the dtype's tolerance).
3. It times the compiled program against the same transform uncompiled, in the same
   thread and on the same inputs; it is used only when it is ``min_speedup`` times
   faster. Otherwise, or on any failure, the key is marked and never retried. (Timing
   against the eager request instead let through a forward-mode program traced while a
   request held forward-mode AD's global state: its guards never matched again, so every
   call fell back to the uncompiled transform, 0.71 ms against 0.13 ms for a good one.)
4. Ready programs run under ``torch._dynamo.run``: cached code only, so a request whose
   inputs miss the compiled guards runs the transform eagerly instead of compiling on
   the request path.
5. Dynamo caches compiled code per Python code object, at most 8 entries each, and
   every ``jacrev`` wrapper shares one code object: the 9th program in a process hit
   the limit and silently ran uncompiled (seen in the benchmark). Each program therefore
   enters through a function with a code object of its own (:func:`_own_entry_point`).

Each response says which path served it (``metrics.execution_path``) and, for eager
ones, where compilation stands (``metrics.compilation``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import statistics
import threading
import time
import types
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch.func import jacfwd, jacrev

from jacserve.server.engine._run import MODEL_CALLS

__all__ = ["CompiledPrograms", "ProgramCompiler", "Traceable"]

_LOG = logging.getLogger(__name__)

Traceable = Callable[[Sequence[torch.Tensor]], torch.nn.Module]
"""Makes a module ``torch.compile`` can trace, given example inputs."""


@dataclass
class _Entry:
    state: str  # "counting", "queued", "ready", "failed", "slower"
    eager_runs: int = 0
    program: Callable[..., tuple[object, tuple[torch.Tensor, ...]]] | None = None
    detail: str = ""
    seconds: float = 0.0  # the program's measured time, once ready


class ProgramCompiler:
    """One background thread, at the lowest CPU priority, that runs compile jobs in order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._clock: int | None = None  # the thread's CPU-time clock, once it runs
        self._cpu_seconds = 0.0

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job; the thread starts on the first one."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="jacserve-compile", daemon=True
                )
                self._thread.start()
        self._jobs.put(job)

    def cpu_seconds(self) -> float:
        """CPU time the compile thread has used so far (for the per-request CPU limit).

        >>> ProgramCompiler().cpu_seconds()
        0.0
        """
        if self._clock is not None:
            with contextlib.suppress(OSError):  # the thread has ended: keep the last reading
                self._cpu_seconds = time.clock_gettime(self._clock)
        return self._cpu_seconds

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # best effort: Linux threads only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        with contextlib.suppress(OSError, AttributeError):
            self._clock = time.pthread_getcpuclockid(threading.get_ident())
        while (job := self._jobs.get()) is not None:
            try:
                # NOTE: [Tracing patches nn.Module.__call__ process-wide]
                with MODEL_CALLS.exclusive():
                    job()
            except Exception:  # a job records its own failure; this guards the thread
                _LOG.exception("compile job failed")
            finally:
                self._jobs.task_done()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until queued jobs are done (tests and shutdown); True if they are."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop the thread after the queued jobs."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    eps = torch.finfo(dtype).eps
    return {"rtol": max(1e-5, eps**0.5), "atol": max(1e-6, eps**0.5)}


class CompiledPrograms:
    """Per-model compiled Jacobian programs, keyed by (method, signature, wrt, mode).

    Args:
        compiler: the server's background compiler.
        traceable: makes a traceable module for this model from example inputs.
        compile_after: eager runs of a key before it is compiled.
        max_programs: most programs kept for this model (others stay eager).
        min_speedup: how much faster than eager a program must be to be used.
        disabled: why this model is never compiled (empty: it may be); its requests
            stay eager and report ``"off: <reason>"``.
    """

    def __init__(
        self,
        compiler: ProgramCompiler,
        traceable: Traceable,
        *,
        compile_after: int = 2,
        max_programs: int = 8,
        min_speedup: float = 1.1,
        disabled: str = "",
    ) -> None:
        self._disabled = disabled
        self._compiler = compiler
        self._min_speedup = min_speedup
        self._traceable = traceable
        self._compile_after = compile_after
        self._max_programs = max_programs
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def lookup(
        self, key: Hashable
    ) -> tuple[Callable[..., tuple[object, tuple[torch.Tensor, ...]]] | None, str]:
        """The ready program for ``key`` (or ``None``) and where compilation stands."""
        if self._disabled:
            return None, f"off: {self._disabled}"
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None, "not requested yet"
        if entry.state == "ready":
            return entry.program, "ready"
        return None, entry.state + (f": {entry.detail}" if entry.detail else "")

    def fastest_ready(
        self, keys: Sequence[Hashable]
    ) -> tuple[Hashable, Callable[..., tuple[object, tuple[torch.Tensor, ...]]], float] | None:
        """Among ``keys``, the ready program with the smallest measured time, if any."""
        with self._lock:
            ready = [
                (self._entries[k].seconds, i, k)
                for i, k in enumerate(keys)
                if k in self._entries and self._entries[k].state == "ready"
            ]
            if not ready:
                return None
            seconds, _, key = min(ready)
            return key, self._entries[key].program, seconds  # type: ignore[return-value]

    def record_eager(
        self,
        key: Hashable,
        *,
        inputs: Sequence[torch.Tensor],
        wrt: Sequence[int],
        mode: str,
        blocks: Sequence[torch.Tensor],
    ) -> None:
        """Count an eager run of ``key``; queue a compile job once there were enough."""
        if self._disabled:
            return
        with self._lock:
            entry = self._entries.setdefault(key, _Entry("counting"))
            if entry.state != "counting":
                return
            entry.eager_runs += 1
            if entry.eager_runs < self._compile_after:
                return
            if (
                sum(e.state in ("queued", "ready") for e in self._entries.values())
                >= self._max_programs
            ):
                entry.state, entry.detail = (
                    "failed",
                    f"this model already has {self._max_programs} programs",
                )
                return
            entry.state = "queued"
        example = tuple(t.detach().clone() for t in inputs)
        expected = tuple(b.detach().clone() for b in blocks)
        self._compiler.submit(lambda: self._build(key, example, tuple(wrt), mode, expected))

    def _build(
        self,
        key: Hashable,
        inputs: tuple[torch.Tensor, ...],
        wrt: tuple[int, ...],
        mode: str,
        expected: tuple[torch.Tensor, ...],
    ) -> None:
        try:
            program, uncompiled = self._compile(inputs, wrt, mode)
            with torch.no_grad():
                jac, _ = program(*inputs)
            blocks = [jac[i][j] for i in range(len(jac)) for j in range(len(wrt))]
            for got, want in zip(blocks, expected, strict=True):
                if got.shape != want.shape or not torch.allclose(
                    got, want, equal_nan=True, **_tolerance(want.dtype)
                ):
                    raise ValueError("the compiled Jacobian differs from the eager one")
            compiled_seconds = _median_seconds(program, inputs)
            eager_seconds = _median_seconds(uncompiled, inputs)
        except Exception as exc:  # any failure: stay eager for this key
            _LOG.info("compiling %s failed: %s", key, exc)
            self._settle(
                key, "failed", None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            )
            return
        if compiled_seconds * self._min_speedup > eager_seconds:
            self._settle(
                key,
                "slower",
                None,
                f"compiled {compiled_seconds * 1e3:.3f} ms vs eager {eager_seconds * 1e3:.3f} ms",
            )
            return
        self._settle(
            key,
            "ready",
            program,
            f"{compiled_seconds * 1e3:.3f} ms vs eager {eager_seconds * 1e3:.3f} ms",
        )

    def _compile(
        self, inputs: tuple[torch.Tensor, ...], wrt: tuple[int, ...], mode: str
    ) -> tuple[Callable[..., tuple[object, tuple[torch.Tensor, ...]]], Callable[..., object]]:
        """(the compiled program, run-only; the same transform uncompiled)."""
        module = self._traceable(inputs)

        def with_outputs(
            *args: torch.Tensor,
        ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
            out = module(*args)
            outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            return outs, outs

        transform = jacfwd if mode == "forward" else jacrev
        uncompiled = transform(with_outputs, argnums=wrt, has_aux=True)
        compiled = torch.compile(_own_entry_point(uncompiled), dynamic=False)
        with torch.no_grad():
            compiled(*inputs)  # builds the program here, on the compile thread
        return torch._dynamo.run(compiled), uncompiled

    def discard(self, key: Hashable, reason: str) -> None:
        """Stop using a program that failed at run time; the key stays eager."""
        _LOG.warning("compiled program %s failed at run time: %s", key, reason)
        self._settle(key, "failed", None, f"failed at run time: {reason}")

    def _settle(
        self, key: Hashable, state: str, program: object, detail: str, seconds: float = 0.0
    ) -> None:
        with self._lock:
            entry = self._entries[key]
            entry.state, entry.program, entry.detail = state, program, detail  # type: ignore[assignment]
            entry.seconds = seconds


_entry_points = itertools.count()


def _own_entry_point(transformed: Callable[..., object]) -> Callable[..., object]:
    """A function calling ``transformed`` whose code object no other program shares.

    >>> f, g = _own_entry_point(abs), _own_entry_point(abs)
    >>> f(-2), f.__code__ is g.__code__
    (2, False)
    """

    def program(*args: object) -> object:
        return transformed(*args)

    code = program.__code__.replace(co_name=f"jacobian_program_{next(_entry_points)}")
    return types.FunctionType(code, program.__globals__, code.co_name, None, program.__closure__)


def _median_seconds(program: Callable[..., object], inputs: Sequence[torch.Tensor]) -> float:
    device = inputs[0].device
    samples = []
    with torch.no_grad():
        for _ in range(7):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            program(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)
