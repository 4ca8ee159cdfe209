"""What every engine call shares: its record, its metrics and result types, common checks.

NOTE: [Forward-mode AD is process-global]
torch.func.jvp keeps its nesting depth in a module-level counter and enters
torch.autograd.forward_ad's dual level, which is also process-global: when two threads
run forward mode at once, one can skip entering the level or clear the other's tangents
on exit. Measured here on torch 2.13: 3 of 120 forward-mode Jacobians of an eager
Linear+Tanh computed from 4 threads came back wrong, with no error. Every forward-mode
computation therefore holds :data:`FORWARD_AD_LOCK`; reverse mode keeps its state per
thread and runs concurrently. Parallel forward mode needs separate processes.

NOTE: [Tracing patches nn.Module.__call__ process-wide]
torch.fx's tracer (under torch.export, make_fx and torch.compile's AOT step) replaces
``torch.nn.Module.__call__`` for the whole process while it traces. A model called from
another thread meanwhile goes through the tracer's hook and fails with "NameError: module
is not installed as a submodule" (seen in the benchmark: a request raced the background
compile of another program). Engine calls therefore hold :data:`MODEL_CALLS` shared and
the compiler holds it exclusively while it builds, so a request waits for a build to
finish (seconds, once per compiled program) instead of failing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from jacserve.server.engine._function import Outputs, safe_execution
from jacserve.server.engine._measure import MEMORY_METERS, PeakMemory, measure_peak_memory
from jacserve.server.engine.planner import Mode, ModePlan
from jacserve.server.errors import InvalidArgument

__all__ = [
    "FORWARD_AD_LOCK",
    "MODEL_CALLS",
    "EngineMetrics",
    "EngineResult",
    "Run",
    "SharedExclusiveLock",
    "check_floating_outputs",
    "count_nonfinite",
    "engine_call",
    "finish",
    "missing_forward_rule",
    "mode_lock",
]

FORWARD_AD_LOCK = threading.RLock()
"""Serializes forward-mode AD between threads (its state is process-wide); re-entrant, so
a memory probe under the lock can run a forward pass that takes it again."""


def mode_lock(mode: Mode) -> contextlib.AbstractContextManager[object]:
    """Forward mode holds the process-wide lock; see NOTE: [Forward-mode AD is process-global]."""
    return FORWARD_AD_LOCK if mode == "forward" else contextlib.nullcontext()


class SharedExclusiveLock:
    """Many holders of :meth:`shared` at once, or one of :meth:`exclusive`.

    >>> lock = SharedExclusiveLock()
    >>> with lock.shared(), lock.shared():
    ...     pass
    >>> with lock.exclusive():
    ...     pass
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock alongside other shared holders."""
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone."""
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


MODEL_CALLS = SharedExclusiveLock()
"""Shared by engine calls, exclusive while a program is traced (see the NOTE above)."""


@dataclass(frozen=True)
class EngineMetrics:
    """How a derivative was computed and what it cost (times in seconds, sizes per point)."""

    mode: Mode
    mode_reason: str
    input_size: int
    output_size: int
    passes: int
    vectorized: bool
    fallback_reason: str
    forward_seconds: float
    derivative_seconds: float
    peak_memory_bytes: int
    memory_method: str
    nonfinite_count: int
    warnings: tuple[str, ...]
    device: str
    plan_seconds: float = 0.0
    chunks: int = 1
    chunk_size: int = 0
    batch_size: int = 0
    estimated_forward_seconds: float = 0.0
    estimated_reverse_seconds: float = 0.0
    memory_budget_bytes: int = 0
    estimated_peak_bytes: int = 0
    execution_path: str = "eager"
    compilation: str = ""
    checkpoint_segments: int = 0
    recompute_seconds: float = 0.0


@dataclass(frozen=True)
class EngineResult:
    """Outputs of the method, the derivative tensors, and metrics (see the function docs)."""

    outputs: Outputs
    tuple_output: bool
    values: tuple[torch.Tensor, ...]
    metrics: EngineMetrics
    names: tuple[str, ...] = ()


@dataclass
class Run:
    """Mutable record of one engine call, frozen into :class:`EngineMetrics` at the end."""

    device: torch.device
    peak: PeakMemory
    forward_seconds: float = 0.0
    derivative_seconds: float = 0.0
    plan_seconds: float = 0.0
    vectorized: bool = True
    fallback_reason: str = ""
    chunks: int = 1
    chunk_size: int = 0
    batch_size: int = 0
    memory_budget_bytes: int = 0
    estimated_peak_bytes: int = 0
    execution_path: str = "eager"
    compilation: str = ""
    checkpoint_segments: int = 0
    recompute_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def fall_back(self, reason: str, *, vectorized: bool) -> None:
        """Record a fallback (also as a warning the caller sees)."""
        self.vectorized = vectorized
        self.fallback_reason = "; ".join(r for r in (self.fallback_reason, reason) if r)
        self.warnings.append(reason)


@contextlib.contextmanager
def engine_call(inputs: Sequence[torch.Tensor], memory_meter: str = "rss") -> Iterator[Run]:
    """Enter what every engine call needs: safe TorchScript, no outer tape, a memory meter.

    Raises:
        InvalidArgument: an unknown ``memory_meter``.
    """
    if memory_meter not in MEMORY_METERS:
        raise InvalidArgument(f"memory_meter must be one of {MEMORY_METERS}; got {memory_meter!r}")
    device = inputs[0].device if inputs else torch.device("cpu")
    with (
        MODEL_CALLS.shared(),
        safe_execution(),
        torch.no_grad(),
        measure_peak_memory(device, memory_meter) as peak,
    ):
        yield Run(device=device, peak=peak)


def missing_forward_rule(exc: BaseException) -> bool:
    """Whether ``exc`` says an op has no forward-mode AD formula."""
    text = str(exc)
    return isinstance(exc, NotImplementedError | RuntimeError) and (
        "forward AD" in text or "forward-mode" in text or "forward mode" in text
    )


def check_floating_outputs(outputs: Outputs, method: str) -> None:
    """Raise InvalidArgument for an output that cannot be differentiated."""
    for i, out in enumerate(outputs):
        if not out.is_floating_point():
            raise InvalidArgument(
                f"output {i} of method {method!r} has dtype {str(out.dtype).removeprefix('torch.')}; "
                "only floating-point outputs can be differentiated"
            )


def count_nonfinite(tensor: torch.Tensor) -> int:
    """NaN and infinite elements of a floating tensor (0 for others).

    One pass when there are none: any NaN or infinity makes the sum NaN or infinite, so
    a finite sum proves every element finite; only a non-finite sum (which finite values
    can also give, by overflow) pays for counting element by element.

    >>> count_nonfinite(torch.tensor([1.0, float("nan"), float("inf")])), count_nonfinite(torch.ones(3))
    (2, 0)
    >>> count_nonfinite(torch.full((4,), 3e38))  # the sum overflows; the values do not
    0
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return 0
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def finish(
    run: Run,
    plan: ModePlan,
    *,
    n: int,
    m: int,
    outputs: Outputs,
    tuple_output: bool,
    values: Sequence[torch.Tensor],
    names: Sequence[str] = (),
) -> EngineResult:
    """Freeze a run into an :class:`EngineResult`, counting non-finite values."""
    nonfinite = sum(count_nonfinite(t) for t in (*outputs, *values))
    warnings = list(run.warnings)
    if nonfinite:
        warnings.append(
            f"{nonfinite} non-finite values (NaN or inf) in the outputs or derivatives; "
            "the function may overflow or be non-differentiable at this point"
        )
    metrics = EngineMetrics(
        mode=plan.mode,
        mode_reason=plan.reason,
        input_size=n,
        output_size=m,
        passes=plan.passes,
        vectorized=run.vectorized,
        fallback_reason=run.fallback_reason,
        forward_seconds=run.forward_seconds,
        derivative_seconds=run.derivative_seconds,
        peak_memory_bytes=run.peak.bytes,
        memory_method=run.peak.method,
        nonfinite_count=nonfinite,
        warnings=tuple(warnings),
        device=str(run.device),
        plan_seconds=run.plan_seconds,
        chunks=run.chunks,
        chunk_size=run.chunk_size,
        batch_size=run.batch_size,
        estimated_forward_seconds=plan.estimated_forward_seconds,
        estimated_reverse_seconds=plan.estimated_reverse_seconds,
        memory_budget_bytes=run.memory_budget_bytes,
        estimated_peak_bytes=run.estimated_peak_bytes,
        execution_path=run.execution_path,
        compilation=run.compilation,
        checkpoint_segments=run.checkpoint_segments,
        recompute_seconds=run.recompute_seconds,
    )
    return EngineResult(
        outputs=tuple(o.detach() for o in outputs),
        tuple_output=tuple_output,
        values=tuple(v.detach() for v in values),
        metrics=metrics,
        names=tuple(names),
    )
