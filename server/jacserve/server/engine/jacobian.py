"""The full Jacobian: planned by measured cost, chunked by a memory budget, batched over points.

>>> import torch
>>> r = jacobian(lambda x: x ** 2, [torch.tensor([1.0, 2.0])])
>>> r.values[0]
tensor([[2., 0.],
        [0., 4.]])
>>> r = jacobian(lambda x: x ** 2, [torch.tensor([[1.0], [3.0]])], batched=True)
>>> r.values[0].tolist(), r.metrics.batch_size
([[[2.0]], [[6.0]]], 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp
from torch.func import vmap

from jacserve.server.engine._autoplan import learn, planned
from jacserve.server.engine._costbook import CostBook, book_for
from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    Outputs,
    numel,
    resolve_wrt,
    summarize_error,
    user_code,
)
from jacserve.server.engine._measure import LiveTensorMeter, stopwatch
from jacserve.server.engine._passes import Basis, BasisWindow, run_passes
from jacserve.server.engine._profile import MemoryProfile, probe_memory
from jacserve.server.engine._run import (
    FORWARD_AD_LOCK,
    EngineResult,
    Run,
    check_floating_outputs,
    engine_call,
    finish,
    missing_forward_rule,
)
from jacserve.server.engine.cache import DerivativeCache, signature_of
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.engine.planner import Mode, ModePlan, RequestedMode
from jacserve.server.errors import (
    InvalidArgument,
    JacserveError,
    ModelExecutionError,
    ResourceExhausted,
)

__all__ = ["blocks_from_passes", "cost_key", "jacobian"]

Single = Callable[..., tuple[torch.Tensor, ...]]


@dataclasses.dataclass(frozen=True)
class _Options:
    """The caller's options of one :func:`jacobian` call, passed down its steps."""

    wrt: tuple[int, ...]
    mode: RequestedMode
    chunk_size: int | None
    max_memory_bytes: int | None
    max_elements: int | None
    cache: DerivativeCache | None
    memory_meter: str
    method: str
    passes: tuple[int, int] | None = None  # a window of the passes (see jacobian())
    evaluation_bytes: int = 0  # what the evaluation leaves alive, when a budget applies

    def per_point(self) -> dict[str, Any]:
        """Keyword arguments for a :func:`jacobian` call on one point of a batch."""
        # Not dataclasses.asdict: it deep-copies, and the cache holds a lock (and must be
        # the same cache, so that the points share what it learns).
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "evaluation_bytes"
        }


def _signature(
    method: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int], batched: bool
) -> tuple[Hashable, ...]:
    return (method, signature_of(inputs), tuple(wrt), batched)


def cost_key(
    method: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int], *, batched: bool
) -> tuple[Hashable, ...]:
    """The cache key of auto mode's :class:`CostBook` for a call (see NOTE: [Re-probing]).

    >>> cost_key("forward", [torch.zeros(2)], [0], batched=False)[0]
    'costbook'
    """
    return ("costbook", *_signature(method, inputs, wrt, batched))


def _point_batch(inputs: Sequence[torch.Tensor]) -> int:
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        shapes = [list(t.shape) for t in inputs]
        raise InvalidArgument(
            "batched inputs need one shared leading dimension of at least 1 (the points); "
            f"got shapes {shapes}"
        )
    return sizes.pop()


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
        with _mode_lock(self.mode):
            return vmap(self.single())(*self.basis.rows(0, passes))


def _mode_lock(mode: Mode) -> contextlib.AbstractContextManager[object]:
    """Forward mode holds the process-wide lock; see NOTE: [Forward-mode AD is process-global]."""
    return FORWARD_AD_LOCK if mode == "forward" else contextlib.nullcontext()


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
        with _mode_lock(chosen.mode):
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
            "bytes (max_memory_bytes); raise the budget or differentiate fewer inputs (wrt)"
        )
    chunk = max(1, min(chunk, fitting))
    run.estimated_peak_bytes = profile.needed_bytes(reserved, chunk)
    return chunk


def blocks_from_passes(
    mode: Mode,
    results: tuple[torch.Tensor, ...],
    outputs: Outputs,
    diff: Outputs,
    batch: int | None,
) -> list[torch.Tensor]:
    """Cut per-pass results into blocks [i][j] of shape ([B], *out_i, *in_j), row-major."""
    lead = 1 if batch is not None else 0
    out_shapes = [o.shape[lead:] for o in outputs]
    in_shapes = [d.shape[lead:] for d in diff]
    blocks: list[torch.Tensor | None] = [None] * (len(outputs) * len(diff))
    if mode == "forward":
        for i, column in enumerate(results):
            offset = 0
            for j, in_shape in enumerate(in_shapes):
                size = in_shape.numel()
                part = column[offset : offset + size].movedim(0, -1)
                blocks[i * len(diff) + j] = part.reshape((*part.shape[:-1], *in_shape))
                offset += size
    else:
        offset = 0
        for i, out_shape in enumerate(out_shapes):
            size = out_shape.numel()
            for j, row in enumerate(results):
                part = row[offset : offset + size]
                if batch is not None:
                    part = part.movedim(0, 1)
                blocks[i * len(diff) + j] = part.reshape(
                    (*([batch] if batch is not None else []), *out_shape, *in_shapes[j])
                )
            offset += size
    return [b for b in blocks if b is not None]


def _zero_blocks(outputs: Outputs, diff: Outputs, batch: int | None) -> list[torch.Tensor]:
    lead = 1 if batch is not None else 0
    prefix = [batch] if batch is not None else []
    return [
        torch.zeros((*prefix, *o.shape[lead:], *d.shape[lead:]), dtype=o.dtype, device=o.device)
        for o in outputs
        for d in diff
    ]


def jacobian(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    mode: RequestedMode = "auto",
    batched: bool = False,
    chunk_size: int | None = None,
    max_memory_bytes: int | None = None,
    max_elements: int | None = None,
    cache: DerivativeCache | None = None,
    compiled: CompiledPrograms | None = None,
    memory_meter: str = "rss",
    method: str = "forward",
    passes: tuple[int, int] | None = None,
) -> EngineResult:
    """Full Jacobian at ``inputs`` (or at each of a batch of points).

    Passes run as checked vmap calls over rows of the identity (see NOTE: [Vectorization
    check] in ``_passes``), in chunks when a memory budget asks for it. Where an op has no
    batching rule the passes run one at a time; where it has no forward-mode rule, forward
    mode falls back to reverse. Both are reported in ``metrics.fallback_reason``.

    Args:
        fn: the model method.
        inputs: one tensor per positional input; with ``batched``, each has a leading
            dimension B of points.
        wrt: indices of the inputs to differentiate; default every floating input.
        mode: ``"forward"``, ``"reverse"`` or ``"auto"``. Auto uses per-pass costs measured
            on first use when a ``cache`` is given (see NOTE: [Cost model] in ``_profile``),
            else compares n and m.
        batched: a Jacobian at each of B points, like ``vmap(jacrev(f))``.
        chunk_size: at most this many passes per vectorized call.
        max_memory_bytes: keep the passes' peak (measured per pass on first use) and the
            result under this many bytes, chunking as needed.
        max_elements: refuse, before any derivative pass, Jacobians with more elements.
        cache: where measured costs, memory profiles and checks are kept between calls.
        compiled: the model's compiled programs; a single-point Jacobian without a budget
            is served from one when it is ready, and counts towards building one when
            not (see NOTE: [Compiled derivative programs] in ``compiled``).
        memory_meter: ``"rss"`` or ``"tensors"``: how CPU peak memory is measured (see
            NOTE: [Peak memory on CPU] in ``_measure``); CUDA uses the allocator.
        method: the method's name, for messages.
        passes: ``(start, stop)``: only these passes of a forced ``mode`` (columns in
            forward mode, rows in reverse, over the flattened wrt inputs or outputs), for
            splitting one Jacobian across servers; ``(0, 0)`` only plans (any mode).

    Returns:
        :class:`EngineResult` whose ``values`` are the blocks ``[i][j]`` flattened
        row-major, block ``(i, j)`` of shape ``[B] + outputs[i].shape + inputs[wrt[j]].shape``
        (per-point shapes). With ``passes``: one ``[stop - start, M or N]`` tensor, row
        ``k`` the result of pass ``start + k`` (none when planning only).

    Raises:
        InvalidArgument: bad ``wrt``, ``mode``, ``chunk_size`` or batch, or non-floating
            outputs; ``ModelExecutionError`` if ``fn`` raises.
        ResourceExhausted: above ``max_elements``, or one pass does not fit the budget.

    >>> r = jacobian(lambda a, b: a * b, [torch.tensor(2.0), torch.tensor(3.0)], mode="forward")
    >>> r.values, r.metrics.passes
    ((tensor(3.), tensor(2.)), 2)
    """
    if chunk_size is not None and chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be >= 1 or unset; got {chunk_size}")
    if max_memory_bytes is not None and max_memory_bytes < 1:
        raise InvalidArgument(f"max_memory_bytes must be >= 1 or unset; got {max_memory_bytes}")
    if mode not in ("auto", "forward", "reverse"):
        raise InvalidArgument(
            f"plan_mode: expected mode 'auto', 'forward' or 'reverse'; got {mode!r}"
        )
    if passes is not None:
        _check_window(passes, mode, batched)
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    batch = _point_batch(inputs) if batched else None
    options = _Options(
        wrt=chosen,
        mode=mode,
        chunk_size=chunk_size,
        max_memory_bytes=max_memory_bytes,
        max_elements=max_elements,
        cache=cache,
        memory_meter=memory_meter,
        method=method,
        passes=passes,
    )
    g = BoundMethod(vmap(fn) if batched else fn, inputs, chosen, method)
    diff = tuple(inputs[j] for j in chosen)
    use_compiled = (
        compiled is not None
        and not batched
        and chunk_size is None
        and max_memory_bytes is None
        and passes is None
    )
    cannot_vmap_points: ModelExecutionError | None = None
    with engine_call(inputs, memory_meter) as run:
        run.batch_size = batch or 0
        if use_compiled:
            fast = _compiled_run(run, compiled, cache, inputs, diff, chosen, mode, method)
            if fast is not None:
                plan, n, m, outputs, tuple_output, blocks = fast
                run.execution_path = "compiled"
        if run.execution_path == "eager":
            try:
                plan, n, m, outputs, blocks = _eager_run(
                    run, g, inputs, diff, chosen, batch, options
                )
            except ModelExecutionError as exc:
                if not batched:
                    raise
                cannot_vmap_points = exc  # retried point by point below, outside this call
            else:
                tuple_output = g.tuple_output
                if use_compiled:
                    key = _program_key(method, inputs, chosen, plan.mode)
                    if run.chunks == 1 and run.vectorized and n and m:
                        compiled.record_eager(
                            key, inputs=inputs, wrt=chosen, mode=plan.mode, blocks=blocks
                        )
                    run.compilation = compiled.lookup(key)[1]
                if cache is not None:
                    cache.put(
                        ("outputs", *_signature(method, inputs, chosen, batched)), (m, tuple_output)
                    )
    if cannot_vmap_points is not None:
        cause = cannot_vmap_points.__cause__ or cannot_vmap_points
        return _point_by_point(fn, inputs, batch, cause, options)  # a real error raises here too
    return finish(run, plan, n=n, m=m, outputs=outputs, tuple_output=tuple_output, values=blocks)


def _check_window(passes: tuple[int, int], mode: RequestedMode, batched: bool) -> None:
    start, stop = passes
    if start < 0 or stop < start:
        raise InvalidArgument(f"passes: need 0 <= start <= stop; got [{start}, {stop})")
    if batched:
        raise InvalidArgument("passes: a window of passes cannot be combined with batched inputs")
    if mode == "auto" and stop > 0:
        raise InvalidArgument(
            "passes: a window of passes needs mode FORWARD or REVERSE, so that every server "
            "splits the same passes; plan first with the empty window [0, 0)"
        )


def _window_width(passes: tuple[int, int] | None, mode: RequestedMode, n: int, m: int) -> int:
    """Elements of the result: the whole Jacobian's, or the window's."""
    if passes is None:
        return n * m
    return (passes[1] - passes[0]) * (m if mode == "forward" else n)


def _eager_run(
    run: Run,
    g: BoundMethod,
    inputs: tuple[torch.Tensor, ...],
    diff: Outputs,
    chosen: tuple[int, ...],
    batch: int | None,
    options: _Options,
) -> tuple[ModePlan, int, int, Outputs, list[torch.Tensor]]:
    """Evaluate, plan and run the passes eagerly: (plan, n, m, outputs, blocks)."""
    method, cache, mode = options.method, options.cache, options.mode
    batched = batch is not None
    evaluation_key = ("evaluation_bytes", *_signature(method, inputs, chosen, batched))
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
                "for fewer passes per request"
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
            "fewer inputs (wrt)"
        )
    signature = _signature(method, inputs, chosen, batched)
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


def _program_key(
    method: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int], mode: Mode
) -> tuple[Hashable, ...]:
    return ("jacobian", *_signature(method, inputs, wrt, False), mode)


def _compiled_run(
    run: Run,
    compiled: CompiledPrograms,
    cache: DerivativeCache | None,
    inputs: tuple[torch.Tensor, ...],
    diff: Outputs,
    wrt: tuple[int, ...],
    mode: RequestedMode,
    method: str,
) -> tuple[ModePlan, int, int, Outputs, bool, list[torch.Tensor]] | None:
    """Serve from a ready compiled program, when the plan is known without evaluating.

    See NOTE: [Compiled derivative programs] in ``compiled``.
    """
    signature = _signature(method, inputs, wrt, False)
    known = cache.get(("outputs", *signature)) if cache is not None else None
    if known is None:
        return None
    m, tuple_output = known
    n = numel(diff)
    book: CostBook | None = cache.get(("costbook", *signature))
    if mode == "auto" and (book is None or book.first_use):
        return None
    plan = planned(n, m, mode, book)
    modes: tuple[Mode, ...] = ("forward", "reverse") if mode == "auto" else (plan.mode,)
    fastest = compiled.fastest_ready([_program_key(method, inputs, wrt, k) for k in modes])
    if fastest is None:
        run.compilation = compiled.lookup(_program_key(method, inputs, wrt, plan.mode))[1]
        return None
    key, program, seconds = fastest
    run.compilation = "ready"
    chosen: Mode = key[-1]  # type: ignore[assignment]
    if chosen != plan.mode:
        eager_estimate = (
            plan.estimated_forward_seconds
            if plan.mode == "forward"
            else plan.estimated_reverse_seconds
        )
        if eager_estimate and eager_estimate < seconds:  # the other mode is faster even eagerly
            run.compilation = compiled.lookup(_program_key(method, inputs, wrt, plan.mode))[1]
            return None
        plan = ModePlan(
            chosen,
            n if chosen == "forward" else m,
            f"auto: the compiled {chosen}-mode program ({seconds * 1e3:.3f} ms) is the fastest "
            f"ready program; eager estimates favoured {plan.mode}",
            plan.estimated_forward_seconds,
            plan.estimated_reverse_seconds,
        )
    try:
        with (
            stopwatch(run.device) as t_derivative,
            _mode_lock(plan.mode),
        ):
            jac, outputs = program(*inputs)
    except Exception as exc:  # never fail a request for the compiled path: go eager
        compiled.discard(key, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        run.compilation = compiled.lookup(key)[1]
        return None
    run.derivative_seconds = t_derivative.seconds
    blocks = [jac[i][j] for i in range(len(outputs)) for j in range(len(wrt))]
    return plan, n, m, tuple(outputs), tuple_output, blocks


def _compute(
    run: Run,
    plan: ModePlan,
    modes: dict[str, _Mode],
    outputs: Outputs,
    diff: Outputs,
    batch: int | None,
    signature: tuple[Hashable, ...],
    options: _Options,
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
    options: _Options,
) -> list[torch.Tensor]:
    if chosen.basis.count == 0:
        run.chunks = 0
        return _zero_blocks(outputs, diff, batch)
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
    with _mode_lock(chosen.mode):
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


def _point_by_point(
    fn: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    batch: int,
    cause: Exception,
    options: _Options,
) -> EngineResult:
    """The batched Jacobian as a loop over points, when the model cannot be vmapped."""
    results = [jacobian(fn, [t[b] for t in inputs], **options.per_point()) for b in range(batch)]
    first = results[0]
    reason = (
        f"the model cannot be vectorized over points ({type(cause).__name__}: "
        f"{summarize_error(cause)[:200]}); computed each point separately"
    )
    metrics = first.metrics
    return dataclasses.replace(
        first,
        outputs=tuple(
            torch.stack(parts) for parts in zip(*(r.outputs for r in results), strict=True)
        ),
        values=tuple(
            torch.stack(parts) for parts in zip(*(r.values for r in results), strict=True)
        ),
        metrics=dataclasses.replace(
            metrics,
            vectorized=False,
            fallback_reason="; ".join(x for x in (reason, metrics.fallback_reason) if x),
            warnings=(reason, *metrics.warnings),
            batch_size=batch,
            forward_seconds=sum(r.metrics.forward_seconds for r in results),
            derivative_seconds=sum(r.metrics.derivative_seconds for r in results),
            plan_seconds=sum(r.metrics.plan_seconds for r in results),
            chunks=sum(r.metrics.chunks for r in results),
            nonfinite_count=sum(r.metrics.nonfinite_count for r in results),
            peak_memory_bytes=max(r.metrics.peak_memory_bytes for r in results),
        ),
    )
