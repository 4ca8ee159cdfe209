"""Compiled Jacobian programs: built in a compile worker, verified, measured, then used.

NOTE: [Compiled derivative programs]
Eager torch.func pays Python and dispatch overhead on every op of every pass; a program
compiled by ``torch.compile`` of ``jacfwd``/``jacrev`` runs a small Jacobian several times
faster (measured here: a 100→100 MLP 0.22 ms compiled against 0.82 ms eager), but costs
seconds to build (2–4 s, 20+ s for the first in a process, minutes for a transformer).
So no request ever waits for one:

1. Requests are answered eagerly. After ``compile_after`` eager Jacobians of one
   (method, input signature, wrt, mode) the key becomes ``requested`` and the serving
   worker tells the frontend (:meth:`CompiledPrograms.take_requests`), which hands the
   request to a *compile worker*: another confined process for the same archive
   (:mod:`jacserve.server.worker.compiling`). The serving worker goes on serving eagerly.
2. The compile worker, in a thread at the lowest CPU priority, answers the request
   eagerly, then :meth:`build_requested` builds the program: a traceable module (a torch.export
   program as loaded; TorchScript converted with ``TS2EPConverter``), ``torch.compile`` of
   ``jacfwd``/``jacrev`` of it for the wrt inputs, checked against the eager Jacobian of
   that request (``torch.allclose`` at the dtype's tolerance).
3. It is then timed *in the serving path*: the whole request handler, compiled against
   eager (:meth:`eager_only`), alternately. A program not ``min_speedup`` times faster is
   marked ``slower`` and never used; a failure is marked ``failed``. Either way the key is
   never retried in that process.
4. The frontend then promotes the compile worker to serve the archive (it drops fork and
   exec first) and retires the eager ones. Inductor's caches live in the compile
   worker's folder, which outlives it, so a later compile worker of the same archive
   rebuilds known programs from cache.
5. Ready programs run under ``torch._dynamo.run``: cached code only, so a request whose
   inputs miss the compiled guards runs the transform eagerly instead of compiling.
6. Dynamo caches compiled code per Python code object, at most 8 entries each, and
   every ``jacrev`` wrapper shares one code object: the 9th program in a process hit
   the limit and silently ran uncompiled. Each program therefore enters through a
   function with a code object of its own (:func:`_own_entry_point`).

Each response says which path served it (``metrics.execution_path``) and, for eager
ones, where compilation stands (``metrics.compilation``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import statistics
import threading
import time
import types
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.func import jacfwd, jacrev

from jacserve.server.engine._run import MODEL_CALLS

__all__ = ["BuildOutcome", "CompiledPrograms", "Traceable"]

_LOG = logging.getLogger(__name__)

Traceable = Callable[[Sequence[torch.Tensor]], torch.nn.Module]
"""Makes a module ``torch.compile`` can trace, given example inputs."""

Program = Callable[..., tuple[object, tuple[torch.Tensor, ...]]]


@dataclass
class _Entry:
    state: str  # "counting", "requested", "built", "ready", "failed", "slower"
    eager_runs: int = 0
    program: Program | None = None
    detail: str = ""
    seconds: float = 0.0  # the program's measured time, once ready
    job: tuple[tuple[torch.Tensor, ...], tuple[int, ...], str, tuple[torch.Tensor, ...]] | None = (
        None
    )


@dataclass(frozen=True)
class BuildOutcome:
    """How building one program ended: ``outcome`` is ``built`` (verified, not yet
    measured) or ``failed``; ``seconds`` is the build's wall time."""

    key: Hashable
    outcome: str
    detail: str
    seconds: float


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    eps = torch.finfo(dtype).eps
    return {"rtol": max(1e-5, eps**0.5), "atol": max(1e-6, eps**0.5)}


class CompiledPrograms:
    """Per-model compiled Jacobian programs, keyed by (method, signature, wrt, mode).

    Args:
        traceable: makes a traceable module for this model from example inputs.
        compile_after: eager runs of a key before it is requested.
        max_programs: most programs kept for this model (others stay eager).
        min_speedup: how much faster than eager, in the serving path, a program must be.
        disabled: why this model is never compiled (empty: it may be); its requests
            stay eager and report ``"off: <reason>"``.

    >>> programs = CompiledPrograms(lambda inputs: torch.nn.Identity(), compile_after=1)
    >>> programs.lookup(("a key",))
    (None, 'not requested yet')
    """

    def __init__(
        self,
        traceable: Traceable,
        *,
        compile_after: int = 2,
        max_programs: int = 8,
        min_speedup: float = 1.1,
        disabled: str = "",
    ) -> None:
        self._disabled = disabled
        self._min_speedup = min_speedup
        self._traceable = traceable
        self._compile_after = compile_after
        self._max_programs = max_programs
        self._entries: dict[Hashable, _Entry] = {}
        self._requests: list[Hashable] = []
        self._eager_only = False
        self._lock = threading.Lock()

    def lookup(self, key: Hashable) -> tuple[Program | None, str]:
        """The ready program for ``key`` (or ``None``) and where compilation stands."""
        if self._disabled:
            return None, f"off: {self._disabled}"
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None, "not requested yet"
        if entry.state == "ready" or (entry.state == "built" and not self._eager_only):
            return entry.program, "ready"
        if entry.state == "requested":
            return None, "requested: a compile worker builds it; requests stay eager meanwhile"
        return None, entry.state + (f": {entry.detail}" if entry.detail else "")

    def fastest_ready(self, keys: Sequence[Hashable]) -> tuple[Hashable, Program, float] | None:
        """Among ``keys``, the usable program with the smallest measured time, if any."""
        usable = ("ready",) if self._eager_only else ("ready", "built")
        with self._lock:
            ready = [
                (self._entries[k].seconds, i, k)
                for i, k in enumerate(keys)
                if k in self._entries and self._entries[k].state in usable
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
        """Count an eager run of ``key``; request a program once there were enough."""
        if self._disabled or self._eager_only:
            return
        with self._lock:
            entry = self._entries.setdefault(key, _Entry("counting"))
            if entry.state != "counting":
                return
            entry.eager_runs += 1
            if entry.eager_runs < self._compile_after:
                return
            live = ("requested", "built", "ready")
            if sum(e.state in live for e in self._entries.values()) >= self._max_programs:
                entry.state = "failed"
                entry.detail = f"this model already has {self._max_programs} programs"
                return
            entry.state = "requested"
            entry.job = (
                tuple(t.detach().clone() for t in inputs),
                tuple(wrt),
                mode,
                tuple(b.detach().clone() for b in blocks),
            )
            self._requests.append(key)

    def take_requests(self) -> list[Hashable]:
        """Keys requested since the last call (the worker reports them to the frontend).

        >>> CompiledPrograms(lambda inputs: torch.nn.Identity()).take_requests()
        []
        """
        with self._lock:
            taken, self._requests = self._requests, []
            return taken

    def build_requested(self) -> list[BuildOutcome]:
        """Build and verify every requested program (a compile worker's job, which runs
        it at the lowest CPU priority); each becomes ``built`` or ``failed``."""
        with self._lock:
            jobs = [(k, e.job) for k, e in self._entries.items() if e.state == "requested"]
        outcomes: list[BuildOutcome] = []
        for key, job in jobs:
            assert job is not None
            began = time.perf_counter()
            try:
                program = self._build(*job)
            except Exception as exc:  # any failure: stay eager for this key
                _LOG.info("compiling %s failed: %s", key, exc)
                detail = (
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                )
                self._settle(key, "failed", None, detail.rstrip(": "))
                outcomes.append(BuildOutcome(key, "failed", detail, time.perf_counter() - began))
                continue
            self._settle(key, "built", program, "verified; not measured yet")
            outcomes.append(BuildOutcome(key, "built", "", time.perf_counter() - began))
        return outcomes

    @contextlib.contextmanager
    def eager_only(self) -> Iterator[None]:
        """Serve every key eagerly inside (to time eager against compiled).

        >>> with CompiledPrograms(lambda inputs: torch.nn.Identity()).eager_only():
        ...     pass
        """
        self._eager_only = True
        try:
            yield
        finally:
            self._eager_only = False

    def settle_measured(self, key: Hashable, compiled_seconds: float, eager_seconds: float) -> str:
        """Use a built program only if it served ``min_speedup`` times faster than eager;
        returns ``ready`` or ``slower``."""
        timing = f"compiled {compiled_seconds * 1e3:.3f} ms vs eager {eager_seconds * 1e3:.3f} ms"
        if compiled_seconds * self._min_speedup > eager_seconds:
            self._settle(key, "slower", None, timing + " per request")
            return "slower"
        with self._lock:
            program = self._entries[key].program
        self._settle(key, "ready", program, timing, compiled_seconds)
        return "ready"

    def _build(
        self,
        inputs: tuple[torch.Tensor, ...],
        wrt: tuple[int, ...],
        mode: str,
        expected: tuple[torch.Tensor, ...],
    ) -> Program:
        # NOTE: [Tracing patches nn.Module.__call__ process-wide]
        with MODEL_CALLS.exclusive():
            program = self._compile(inputs, wrt, mode)
            with torch.no_grad():
                jac, _ = program(*inputs)
        blocks = [jac[i][j] for i in range(len(jac)) for j in range(len(wrt))]  # type: ignore[index]
        for got, want in zip(blocks, expected, strict=True):
            if got.shape != want.shape or not torch.allclose(
                got, want, equal_nan=True, **_tolerance(want.dtype)
            ):
                raise ValueError("the compiled Jacobian differs from the eager one")
        return program

    def _compile(
        self, inputs: tuple[torch.Tensor, ...], wrt: tuple[int, ...], mode: str
    ) -> Program:
        """The compiled program, built here and then run-only."""
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
            compiled(*inputs)  # builds the program here, in the compile worker
        return torch._dynamo.run(compiled)

    def ended_elsewhere(self, outcomes: dict[str, str]) -> None:
        """Keys requested here whose compile worker ended without taking over (key text
        → outcome, as the frontend reports them): their status says so; they stay eager.

        >>> programs = CompiledPrograms(lambda inputs: torch.nn.Identity())
        >>> programs.ended_elsewhere({"('k',)": "timeout"})
        """
        with self._lock:
            ended = [
                (k, outcomes[repr(k)])
                for k, e in self._entries.items()
                if e.state == "requested" and repr(k) in outcomes
            ]
        for key, outcome in ended:
            self._settle(key, "failed", None, f"the compile worker ended: {outcome}"[:200])

    def discard(self, key: Hashable, reason: str) -> None:
        """Stop using a program that failed at run time; the key stays eager."""
        _LOG.warning("compiled program %s failed at run time: %s", key, reason)
        self._settle(key, "failed", None, f"failed at run time: {reason}")

    def _settle(
        self, key: Hashable, state: str, program: Program | None, detail: str, seconds: float = 0.0
    ) -> None:
        with self._lock:
            entry = self._entries[key]
            entry.state, entry.program, entry.detail = state, program, detail
            entry.seconds, entry.job = seconds, None


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


def median_seconds(run: Callable[[], object], *, repeats: int = 7) -> float:
    """The median wall time of ``repeats`` calls of ``run``.

    >>> median_seconds(lambda: None) >= 0
    True
    """
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
