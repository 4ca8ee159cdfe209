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

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import vmap

from jacserve.server.engine._budget import GraphSource, Route, checkpointed_run, route
from jacserve.server.engine._compiled_path import compiled_run
from jacserve.server.engine._eager import eager_run
from jacserve.server.engine._function import BoundMethod, resolve_wrt, summarize_error
from jacserve.server.engine._layout import blocks_from_passes
from jacserve.server.engine._request import (
    JacobianOptions,
    call_signature,
    cost_key,
    program_key,
)
from jacserve.server.engine._run import EngineResult, Run, engine_call, finish
from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.engine.planner import RequestedMode
from jacserve.server.errors import InvalidArgument, ModelExecutionError

__all__ = ["blocks_from_passes", "cost_key", "jacobian"]


def _point_batch(inputs: Sequence[torch.Tensor]) -> int:
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        shapes = [list(t.shape) for t in inputs]
        raise InvalidArgument(
            "batched inputs need one shared leading dimension of at least 1 (the points); "
            f"got shapes {shapes}"
        )
    return sizes.pop()


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
    graph: GraphSource | None = None,
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
        graph: the method as an FX graph, for checkpointed reverse mode when its tape
            does not fit ``max_memory_bytes`` (see NOTE: [Fitting the budget] in
            ``_budget``); without it such a Jacobian runs forward or is refused.

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
        raise InvalidArgument(
            f"max_memory_bytes must be >= 1 or unset; got {max_memory_bytes}",
            field="options.max_memory_bytes",
        )
    if mode not in ("auto", "forward", "reverse"):
        raise InvalidArgument(
            f"plan_mode: expected mode 'auto', 'forward' or 'reverse'; got {mode!r}"
        )
    if passes is not None:
        _check_window(passes, mode, batched)
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    batch = _point_batch(inputs) if batched else None
    options = JacobianOptions(
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
            fast = compiled_run(run, compiled, cache, inputs, diff, chosen, mode, method)
            if fast is not None:
                plan, n, m, outputs, tuple_output, blocks = fast
                run.execution_path = "compiled"
        budgeted = None
        if run.execution_path == "eager" and graph is not None and max_memory_bytes is not None:
            budgeted = _fit_budget(run, graph, fn, inputs, chosen, options, batched)
            if isinstance(budgeted, Route):  # forward mode: no tape at all
                options = dataclasses.replace(options, mode="forward")
            elif budgeted is not None:
                plan, n, m, outputs, tuple_output, blocks = budgeted
                run.execution_path = "checkpointed"
        if run.execution_path == "eager":
            try:
                plan, n, m, outputs, blocks = eager_run(
                    run, g, inputs, diff, chosen, batch, options
                )
            except ModelExecutionError as exc:
                if not batched:
                    raise
                cannot_vmap_points = exc  # retried point by point below, outside this call
            else:
                tuple_output = g.tuple_output
                if isinstance(budgeted, Route):
                    plan = dataclasses.replace(plan, reason=budgeted.reason)
                if use_compiled:
                    key = program_key(method, inputs, chosen, plan.mode)
                    if run.chunks == 1 and run.vectorized and n and m:
                        compiled.record_eager(
                            key, inputs=inputs, wrt=chosen, mode=plan.mode, blocks=blocks
                        )
                    run.compilation = compiled.lookup(key)[1]
                if cache is not None:
                    cache.put(
                        ("outputs", *call_signature(method, inputs, chosen, batched)),
                        (m, tuple_output),
                    )
    if cannot_vmap_points is not None:
        cause = cannot_vmap_points.__cause__ or cannot_vmap_points
        return _point_by_point(fn, inputs, batch, cause, options)  # a real error raises here too
    return finish(run, plan, n=n, m=m, outputs=outputs, tuple_output=tuple_output, values=blocks)


def _fit_budget(
    run: Run,
    graph: GraphSource,
    fn: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    chosen: tuple[int, ...],
    options: JacobianOptions,
    batched: bool,
) -> Route | tuple[Any, ...] | None:
    """The way a budgeted Jacobian fits (see NOTE: [Fitting the budget] in ``_budget``):
    ``None`` for the plain path, the forward :class:`Route`, or a checkpointed result
    ``(plan, n, m, outputs, tuple_output, blocks)``."""
    if options.mode == "forward" or batched or options.passes is not None:
        return None
    assert options.max_memory_bytes is not None
    key = (*call_signature(options.method, inputs, chosen, batched), options.max_memory_bytes)
    started = time.perf_counter()
    found = route(
        graph,
        inputs,
        chosen,
        mode=options.mode,
        budget=options.max_memory_bytes,
        cache=options.cache,
        key=key,
    )
    run.plan_seconds += time.perf_counter() - started
    run.memory_budget_bytes = options.max_memory_bytes
    if found is None or found.kind == "forward":
        return found
    cache = options.cache
    verified = cache is not None and cache.get(("budget-verified", *key)) is not None
    plan, outputs, blocks, seconds, recompute = checkpointed_run(
        found, fn, inputs, chosen, verified=verified
    )
    if cache is not None:
        cache.put(("budget-verified", *key), True)
    assert found.graph is not None and found.plan is not None
    run.derivative_seconds = seconds
    run.recompute_seconds = recompute
    run.checkpoint_segments = found.plan.segments
    run.chunks = 1 if found.plan.one_sweep else -(-plan.passes // found.plan.chunk)  # sweeps
    run.chunk_size = found.plan.chunk
    run.estimated_peak_bytes = found.plan.estimated_peak_bytes
    n = sum(inputs[j].numel() for j in chosen)
    return plan, n, plan.passes, outputs, found.graph.tuple_output, blocks


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


def _point_by_point(
    fn: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    batch: int,
    cause: Exception,
    options: JacobianOptions,
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
