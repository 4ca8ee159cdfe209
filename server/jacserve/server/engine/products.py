"""Jacobian-vector and vector-Jacobian products, one or a batch of k at a time.

>>> import torch
>>> jvp(torch.sin, [torch.zeros(2)], [torch.ones(2)]).values
(tensor([1., 1.]),)
>>> r = vjp(lambda x: 3 * x, [torch.ones(2)], [torch.tensor([[1.0, 0.0], [0.0, 1.0]])], batched=True)
>>> r.values[0], r.metrics.batch_size
(tensor([[3., 0.],
        [0., 3.]]), 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp
from torch.func import vmap

from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    Outputs,
    check_like,
    numel,
    resolve_wrt,
    user_code,
)
from jacserve.server.engine._measure import stopwatch
from jacserve.server.engine._passes import Basis, GivenRows, run_passes
from jacserve.server.engine._run import (
    FORWARD_AD_LOCK,
    EngineResult,
    Run,
    check_floating_outputs,
    engine_call,
    finish,
    missing_forward_rule,
)
from jacserve.server.engine.planner import ModePlan
from jacserve.server.errors import InvalidArgument

__all__ = ["batch_size_of", "jvp", "vjp"]


def batch_size_of(kind: str, values: Sequence[torch.Tensor]) -> int:
    """The shared leading dimension of batched ``values`` (tangents, cotangents, vectors).

    >>> batch_size_of("tangents", [torch.zeros(4, 2), torch.zeros(4)])
    4
    """
    sizes = {v.shape[0] if v.dim() else None for v in values}
    if len(sizes) != 1 or None in sizes:
        shapes = [list(v.shape) for v in values]
        raise InvalidArgument(
            f"batched {kind} need one shared leading batch dimension; got shapes {shapes}"
        )
    (size,) = sizes
    if size < 1:
        raise InvalidArgument(f"batched {kind} need a batch of at least 1; got 0")
    return size


def _unbatched(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [v[0] for v in values]


def jvp(
    fn: Callable[..., Any],
    primals: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    batched: bool = False,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """Jacobian-vector product ``J·v`` at ``primals``, or ``k`` of them in one call.

    Args:
        fn: the model method; takes ``len(primals)`` tensors, returns a tensor or tuple.
        primals: the point to differentiate at, one tensor per positional input.
        tangents: one tangent per differentiated input (``wrt`` order), same shape and
            dtype; with ``batched``, each has an extra leading dimension ``k``.
        wrt: indices of the inputs to differentiate; default every floating input.
        batched: compute ``k`` JVPs in one vectorized call.
        memory_meter: ``"rss"`` or ``"tensors"``: how CPU peak memory is measured (see
            NOTE: [Peak memory on CPU] in ``_measure``); CUDA uses the allocator.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` with ``values`` = one JVP per output (the output's shape,
        with a leading ``k`` when batched). When an op has no forward-mode rule, the JVP
        is computed in reverse mode and ``metrics.fallback_reason`` says how.

    Raises:
        InvalidArgument: bad ``wrt`` or tangents; ``ModelExecutionError`` if ``fn`` raises.

    >>> r = jvp(lambda a, b: a * b, [torch.tensor(2.0), torch.tensor(3.0)], [torch.tensor(1.0)], wrt=[0])
    >>> r.values, r.metrics.mode
    ((tensor(3.),), 'forward')
    """
    primals = tuple(primals)
    chosen = resolve_wrt(primals, wrt)
    diff = tuple(primals[j] for j in chosen)
    tangents = tuple(tangents)
    k = batch_size_of("tangents", tangents) if batched and tangents else 0
    check_like(
        "tangents",
        _unbatched(tangents) if batched else list(tangents),
        diff,
        "differentiated input",
    )
    g = BoundMethod(fn, primals, chosen, method)

    def push_forward(*tangent: torch.Tensor) -> tuple[Outputs, Outputs]:
        return func_jvp(g, diff, tangent)

    plan = ModePlan("forward", max(k, 1), f"jvp: {max(k, 1)} forward-mode pass(es)")
    with engine_call(primals, memory_meter) as run:
        run.batch_size = k
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            try:
                with FORWARD_AD_LOCK:
                    if batched:
                        outputs = g(*diff)
                        values, report = run_passes(
                            lambda *t: push_forward(*t)[1],
                            GivenRows(tangents),
                            chunk_size=k,
                            check=True,
                            reraise=missing_forward_rule,
                        )
                        run.vectorized, run.fallback_reason = (
                            report.vectorized,
                            report.fallback_reason,
                        )
                    else:
                        outputs, values = push_forward(*tangents)
            except Exception as exc:
                if not missing_forward_rule(exc):
                    raise
                outputs, values, plan = _jvp_in_reverse_mode(run, g, diff, tangents, batched, exc)
        run.derivative_seconds = t_derivative.seconds
    check_floating_outputs(outputs, method)
    return finish(
        run,
        plan,
        n=numel(diff),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
    )


def _jvp_in_reverse_mode(
    run: Run, g: BoundMethod, diff: Outputs, tangents: Outputs, batched: bool, cause: Exception
) -> tuple[Outputs, Outputs, ModePlan]:
    """J·v without forward mode: the VJP of the VJP (2 passes), else the reverse Jacobian."""
    reason = f"no forward-mode rule ({str(cause).splitlines()[0][:200]})"
    outputs, pullback = func_vjp(g, *diff)
    check_floating_outputs(outputs, g.method)
    try:
        zeros = tuple(torch.zeros_like(o) for o in outputs)
        _, pullback_of_pullback = func_vjp(pullback, zeros)

        def linear(*tangent: torch.Tensor) -> Outputs:
            return pullback_of_pullback(tangent)[0]

        values = vmap(linear)(*tangents) if batched else linear(*tangents)
        run.fall_back(f"{reason}; computed J·v as the VJP of the VJP", vectorized=True)
        return outputs, values, ModePlan("reverse", 2, "jvp: reverse-over-reverse")
    except (NotImplementedError, RuntimeError):
        pass
    rows, report = run_passes(
        lambda *c: pullback(c), Basis(outputs), chunk_size=max(1, numel(outputs)), check=True
    )
    run.vectorized = report.vectorized
    lead = (tangents[0].shape[0],) if batched else ()
    values = []
    offset = 0
    for out in outputs:
        jv = sum(
            t.reshape(-1, row[0].numel())
            @ row[offset : offset + out.numel()].reshape(out.numel(), -1).T
            for row, t in zip(rows, tangents, strict=True)
        )
        values.append(jv.reshape((*lead, *out.shape)))  # a tuple: both may be empty
        offset += out.numel()
    run.fall_back(
        f"{reason}, and no double-backward rule; computed J·v from the reverse-mode Jacobian",
        vectorized=run.vectorized,
    )
    m = numel(outputs)
    return (
        outputs,
        tuple(values),
        ModePlan("reverse", m, f"jvp: {m} reverse passes (full Jacobian)"),
    )


def vjp(
    fn: Callable[..., Any],
    primals: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    batched: bool = False,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """Vector-Jacobian product ``uᵀ·J`` at ``primals``, or ``k`` of them in one call.

    Args:
        fn: the model method.
        primals: the point to differentiate at, one tensor per positional input.
        cotangents: one cotangent per output, same shape and dtype as that output; with
            ``batched``, each has an extra leading dimension ``k``.
        wrt: indices of the inputs to differentiate; default every floating input.
        batched: compute ``k`` VJPs from one recorded forward pass, vectorized.
        memory_meter: ``"rss"`` or ``"tensors"``: how CPU peak memory is measured (see
            NOTE: [Peak memory on CPU] in ``_measure``); CUDA uses the allocator.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` with ``values`` = one VJP per differentiated input (with a
        leading ``k`` when batched).

    Raises:
        InvalidArgument: bad ``wrt`` or cotangents; ``ModelExecutionError`` if ``fn`` raises.

    >>> vjp(lambda x: (x**2).sum(), [torch.tensor([1.0, 2.0])], [torch.tensor(1.0)]).values
    (tensor([2., 4.]),)
    """
    primals = tuple(primals)
    chosen = resolve_wrt(primals, wrt)
    diff = tuple(primals[j] for j in chosen)
    cotangents = tuple(cotangents)
    g = BoundMethod(fn, primals, chosen, method)
    with engine_call(primals, memory_meter) as run:
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            outputs, pullback = func_vjp(g, *diff)
        run.forward_seconds = t_forward.seconds
        check_floating_outputs(outputs, method)
        k = batch_size_of("cotangents", cotangents) if batched and cotangents else 0
        run.batch_size = k
        check_like(
            "cotangents", _unbatched(cotangents) if batched else list(cotangents), outputs, "output"
        )
        plan = ModePlan("reverse", max(k, 1), f"vjp: {max(k, 1)} reverse-mode pass(es)")
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            if batched:
                values, report = run_passes(
                    lambda *c: pullback(c), GivenRows(cotangents), chunk_size=k, check=True
                )
                run.vectorized, run.fallback_reason = report.vectorized, report.fallback_reason
            else:
                values = pullback(cotangents)
        run.derivative_seconds = t_derivative.seconds
    return finish(
        run,
        plan,
        n=numel(diff),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
    )
