"""A Jacobian computed eagerly: evaluate once, check its size, plan the mode, chunk the
passes to the memory budget and run them (forward mode falling back to reverse).

The compiled path is ``_compiled_path``; the call that chooses between them is
:func:`jacserve.server.engine.jacobian.jacobian`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable

import torch
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp
from torch.func import vmap

from jacserve.server.engine._autoplan import learn, planned
from jacserve.server.engine._costbook import book_for
from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    Outputs,
    summarize_error,
    user_code,
)
from jacserve.server.engine._layout import blocks_from_passes, zero_blocks
from jacserve.server.engine._measure import LiveTensorMeter, stopwatch
from jacserve.server.engine._passes import Basis, BasisWindow, run_passes
from jacserve.server.engine._profile import MemoryProfile, probe_memory
from jacserve.server.engine._request import JacobianOptions, call_signature
from jacserve.server.engine._run import (
    Run,
    check_floating_outputs,
    missing_forward_rule,
    mode_lock,
)
from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.planner import Mode, ModePlan, RequestedMode
from jacserve.server.errors import InvalidArgument, JacserveError, Reason, ResourceExhausted

__all__ = ["eager_run"]

Single = Callable[..., tuple[torch.Tensor, ...]]


class _Mode:
    """One mode's passes for a Jacobian: its basis and how to make its pass function."""

    def __init__(
        self,
        mode: Mode,
        g: BoundMethod,
        diff: Outputs,
        outputs: Outputs,
        batch: int | None,
        pullback: Callable[..., Outputs] | None = None,
    ) -> None:
        self.mode = mode
        self._g, self._diff = g, diff
        self._pullback = pullback
        self.basis = Basis(diff if mode == "forward" else outputs, batch)

    def single(self) -> Single:
        """The pass function; reverse mode reuses the tape of the forward evaluation."""
        g, diff = self._g, self._diff
        if self.mode == "forward":
            return lambda *tangent: func_jvp(g, diff, tangent)[1]
        if self._pullback is None:
            self._pullback = func_vjp(g, *diff)[1]
        pullback = self._pullback
        return lambda *cotangent: pullback(cotangent)

    def run(self, passes: int) -> object:
        """Compute the first ``passes`` passes in one vmap call (for probes)."""
        with mode_lock(self.mode):
            return vmap(self.single())(*self.basis.rows(0, passes))


def _evaluate(
    g: BoundMethod, diff: Outputs, *, record: bool = True
) -> tuple[Outputs, Callable[..., Outputs] | None]:
    """Evaluate once, recording the reverse-mode tape that reverse passes will reuse
    (``record``; a forced forward-mode Jacobian needs no tape, and a fallback to reverse
    records its own).

    Falls back to a plain evaluation when recording fails (the reverse passes would fail
    the same way later, with their own message).
    """
    if not record:
        return g.observe(*diff), None
    try:
        return func_vjp(g.observe, *diff)
    except JacserveError:
        raise
    except Exception:
        return g.observe(*diff), None


def _result_bytes(outputs: Outputs, diff: Outputs, mode: Mode, batch: int | None) -> int:
    """Bytes the result holds: the Jacobian (twice in forward mode, whose blocks are
    transposed into place) and the outputs."""
    lead = 1 if batch is not None else 0
    per_point = sum(
        o.shape[lead:].numel() * d.shape[lead:].numel() * o.element_size()
        for o in outputs
        for d in diff
    )
    jacobian_bytes = per_point * (batch or 1)
    return jacobian_bytes * (2 if mode == "forward" else 1) + sum(
        o.numel() * o.element_size() for o in outputs
    )


def _chunking(
    run: Run,
    chosen: _Mode,
    outputs: Outputs,
    diff: Outputs,
    *,
    chunk_size: int | None,
    max_memory_bytes: int | None,
    cache: DerivativeCache | None,
    key: Hashable,
    batch: int | None,
    evaluation_bytes: int,
) -> int:
    """Passes per vectorized call: all, ``chunk_size``, or the most that fit the budget."""
    passes = chosen.basis.count
    chunk = min(passes, chunk_size) if chunk_size else passes
    if max_memory_bytes is None:
        return max(1, chunk)
    run.memory_budget_bytes = max_memory_bytes
    profile: MemoryProfile | None = cache.get(key) if cache is not None else None
    if profile is None:
        with mode_lock(chosen.mode):
            profile = probe_memory(chosen.run, passes)
        if cache is not None:
            cache.put(key, profile)
    # The result, one extra pass for the vectorization check, and 5% for what the two-point
    # fit misses (allocator rounding, slices). See NOTE: [Cost model] in _profile.
    reserved = _result_bytes(outputs, diff, chosen.mode, batch) + profile.per_pass_bytes
    reserved += evaluation_bytes
    reserved += max_memory_bytes // 20
    fitting = profile.largest_chunk(max_memory_bytes, reserved, passes)
    if fitting < 1:
        raise ResourceExhausted(
            f"the Jacobian needs at least {profile.needed_bytes(reserved)} bytes in {chosen.mode} "
            f"mode with one pass per chunk ({reserved} for the result, {profile.fixed_bytes} fixed, "
            f"{profile.per_pass_bytes} per pass), above the memory budget of {max_memory_bytes} "
            "bytes (max_memory_bytes); raise the budget or differentiate fewer inputs (wrt)",
            reason=Reason.BUDGET_TOO_SMALL,
            field="options.max_memory_bytes",
            bytes_needed=profile.needed_bytes(reserved),
            budget_bytes=max_memory_bytes,
            mode=chosen.mode,
        )
    chunk = max(1, min(chunk, fitting))
    run.estimated_peak_bytes = profile.needed_bytes(reserved, chunk)
    return chunk


def _window_width(passes: tuple[int, int] | None, mode: RequestedMode, n: int, m: int) -> int:
    """Elements of the result: the whole Jacobian's, or the window's."""
    if passes is None:
        return n * m
    return (passes[1] - passes[0]) * (m if mode == "forward" else n)


def eager_run(
    run: Run,
    g: BoundMethod,
    inputs: tuple[torch.Tensor, ...],
    diff: Outputs,
    chosen: tuple[int, ...],
    batch: int | None,
    options: JacobianOptions,
) -> tuple[ModePlan, int, int, Outputs, list[torch.Tensor]]:
    """Evaluate, plan and run the passes eagerly: (plan, n, m, outputs, blocks)."""
    method, cache, mode = options.method, options.cache, options.mode
    batched = batch is not None
    evaluation_key = ("evaluation_bytes", *call_signature(method, inputs, chosen, batched))
    measure = options.max_memory_bytes is not None and (
        cache is None or cache.get(evaluation_key) is None
    )
    with (
        user_code(f"calling method {method!r}"),
        stopwatch(run.device) as t_forward,
        LiveTensorMeter() if measure else contextlib.nullcontext() as meter,
    ):
        outputs, pullback = _evaluate(g, diff, record=mode != "forward")
    run.forward_seconds = t_forward.seconds
    if meter is not None:  # what the evaluation leaves alive (tape, outputs) counts too
        options = dataclasses.replace(options, evaluation_bytes=meter.live_bytes)
        if cache is not None:
            cache.put(evaluation_key, meter.live_bytes)
    elif cache is not None and options.max_memory_bytes is not None:
        options = dataclasses.replace(options, evaluation_bytes=cache.get(evaluation_key) or 0)
    check_floating_outputs(outputs, method)
    lead = 1 if batched else 0
    n = sum(d[0].numel() if batched else d.numel() for d in diff)
    m = sum(o.shape[lead:].numel() for o in outputs)
    max_elements = options.max_elements
    if options.passes is not None:
        if max_elements is not None and _window_width(options.passes, mode, n, m) > max_elements:
            raise ResourceExhausted(
                f"the window of passes would have {_window_width(options.passes, mode, n, m)} "
                f"elements, above the limit of {max_elements} (--max-tensor-elements); ask "
                "for fewer passes per request",
                reason=Reason.TENSOR_TOO_LARGE,
                elements=_window_width(options.passes, mode, n, m),
                limit_elements=max_elements,
            )
        total = n if mode == "forward" else m
        if mode != "auto" and options.passes[1] > total:
            raise InvalidArgument(
                f"passes: [{options.passes[0]}, {options.passes[1]}) is outside the "
                f"{total} {mode}-mode passes of this Jacobian"
            )
    elif max_elements is not None and (batch or 1) * n * m > max_elements:
        raise ResourceExhausted(
            f"the Jacobian would have {'B*' if batched else ''}n*m = "
            f"{f'{batch}*' if batched else ''}{n}*{m} = {(batch or 1) * n * m} elements, "
            f"above the limit of {max_elements} (--max-tensor-elements); differentiate "
            "fewer inputs (wrt)",
            reason=Reason.TENSOR_TOO_LARGE,
            elements=(batch or 1) * n * m,
            limit_elements=max_elements,
        )
    signature = call_signature(method, inputs, chosen, batched)
    modes = {
        "forward": _Mode("forward", g, diff, outputs, batch),
        "reverse": _Mode("reverse", g, diff, outputs, batch, pullback),
    }
    book = book_for(cache, ("costbook", *signature)) if cache is not None and n and m else None
    with user_code(f"differentiating method {method!r}", DERIVATIVE_HINT):
        with stopwatch(run.device) as t_plan:
            plan = planned(n, m, mode, book)
        run.plan_seconds = t_plan.seconds
        if options.passes == (0, 0):  # planning only
            return plan, n, m, outputs, []
        checked = cache is None or cache.get(("vectorizes", plan.mode, *signature)) is None
        with stopwatch(run.device) as t_derivative:
            ran, blocks = _compute(run, plan, modes, outputs, diff, batch, signature, options)
        run.derivative_seconds = max(
            0.0, t_derivative.seconds - (run.plan_seconds - t_plan.seconds)
        )
        if book is not None and options.passes is None and run.chunks == 1:
            plan = learn(
                run,
                book,
                plan,
                ran,
                requested=mode,
                checked=checked,
                passes={"forward": n, "reverse": m},
                probes={"forward": modes["forward"].run, "reverse": modes["reverse"].run},
            )
        else:
            plan = ran
    if options.passes is not None:  # a window's time says nothing of the whole Jacobian's
        return (
            dataclasses.replace(plan, passes=options.passes[1] - options.passes[0]),
            n,
            m,
            outputs,
            blocks,
        )
    return plan, n, m, outputs, blocks


def _compute(
    run: Run,
    plan: ModePlan,
    modes: dict[str, _Mode],
    outputs: Outputs,
    diff: Outputs,
    batch: int | None,
    signature: tuple[Hashable, ...],
    options: JacobianOptions,
) -> tuple[ModePlan, list[torch.Tensor]]:
    """Run the planned mode (forward falls back to reverse without a forward rule)."""
    if plan.mode == "forward":
        try:
            return plan, _run_mode(run, modes["forward"], outputs, diff, batch, signature, options)
        except Exception as exc:
            if not missing_forward_rule(exc):
                raise
            reason = f"no forward-mode rule ({summarize_error(exc)[:200]})"
            if options.passes is not None:  # the window's numbering is forward mode's
                raise InvalidArgument(f"{reason}; ask for the passes in reverse mode") from exc
            run.fall_back(f"{reason}; used reverse mode", vectorized=run.vectorized)
            plan = ModePlan(
                "reverse",
                modes["reverse"].basis.count,
                f"{plan.reason}; {reason}, so reverse",
                plan.estimated_forward_seconds,
                plan.estimated_reverse_seconds,
            )
    return plan, _run_mode(run, modes["reverse"], outputs, diff, batch, signature, options)


def _run_mode(
    run: Run,
    chosen: _Mode,
    outputs: Outputs,
    diff: Outputs,
    batch: int | None,
    signature: tuple[Hashable, ...],
    options: JacobianOptions,
) -> list[torch.Tensor]:
    if chosen.basis.count == 0:
        run.chunks = 0
        return zero_blocks(outputs, diff, batch)
    cache = options.cache
    with stopwatch(run.device) as t_probe:
        chunk = _chunking(
            run,
            chosen,
            outputs,
            diff,
            chunk_size=options.chunk_size,
            max_memory_bytes=options.max_memory_bytes,
            cache=cache,
            key=("memory", chosen.mode, *signature),
            batch=batch,
            evaluation_bytes=options.evaluation_bytes,
        )
    run.plan_seconds += t_probe.seconds
    verdict_key = ("vectorizes", chosen.mode, *signature)
    verdict = cache.get(verdict_key) if cache is not None else None
    window = options.passes
    basis = chosen.basis if window is None else BasisWindow(chosen.basis, *window)
    with mode_lock(chosen.mode):
        results, report = run_passes(
            chosen.single(),
            basis,
            chunk_size=chunk,
            check=verdict is None,
            vectorize=verdict is not False,
            reraise=missing_forward_rule,
        )
    if cache is not None and verdict is None:
        cache.put(verdict_key, report.vectorized)
    if verdict is False:
        report.fallback_reason = "an earlier request found vmap unusable for this model; computed the passes one at a time"
    if not report.vectorized:
        run.fall_back(report.fallback_reason, vectorized=False)
    run.chunks, run.chunk_size = report.chunks, chunk
    if window is not None:  # one row per pass, its outputs (or inputs) flattened side by side
        return [torch.cat([r.reshape(r.shape[0], -1) for r in results], dim=1)]
    return blocks_from_passes(chosen.mode, results, outputs, diff, batch)
