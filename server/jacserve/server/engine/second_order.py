"""Second order: Hessian-vector products, full Hessians, Gauss–Newton-vector products.

NOTE: [Second-order modes]
For a scalar f of n inputs, ``H·v`` is the JVP of the gradient (forward-over-reverse):
one forward-mode pass through one reverse pass, about 2–3 evaluations of f whatever n.
Reverse-over-reverse (the VJP of the gradient; ``H`` is symmetric so ``Hᵀv = Hv``)
costs about the same but keeps two tapes; it is the fallback when an op has no
forward-mode rule. The full Hessian is n such products over the identity basis,
vectorized like a Jacobian's passes. For vector outputs the Hessian is a 3-tensor; what
optimisers and uncertainty estimates use is the Gauss–Newton matrix ``JᵀJ``, whose
products ``Jᵀ(J·v)`` take one JVP and one VJP and need no second derivatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad as func_grad
from torch.func import jvp as func_jvp
from torch.func import vjp as func_vjp

from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    Outputs,
    check_like,
    numel,
    resolve_wrt,
    user_code,
)
from jacserve.server.engine._layout import blocks_from_passes
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
from jacserve.server.engine.products import batch_size_of
from jacserve.server.errors import InvalidArgument, Reason, ResourceExhausted

__all__ = ["gauss_newton_vector_products", "hessian", "hessian_vector_products"]

Pass = Callable[..., tuple[torch.Tensor, ...]]


def _scalar(
    g: BoundMethod, diff: Outputs, what: str
) -> tuple[Callable[..., torch.Tensor], Outputs]:
    """``g`` as a function returning its single scalar output, and the outputs at ``diff``
    (evaluated once, to check the output is a scalar)."""
    outputs = g(*diff)
    if len(outputs) != 1 or outputs[0].numel() != 1:
        shapes = [list(o.shape) for o in outputs]
        raise InvalidArgument(
            f"{what} needs a scalar output (one tensor of one element); method "
            f"{g.method!r} returns shapes {shapes}. For vector outputs ask for Gauss–Newton "
            "products (Jᵀ·J·v), or differentiate a scalar summary of the output"
        )
    check_floating_outputs(outputs, g.method)
    return (lambda *d: g(*d)[0].reshape(())), outputs


def _gradient_passes(
    scalar: Callable[..., torch.Tensor], diff: Outputs
) -> tuple[Pass, Callable[[], Pass]]:
    """The forward-over-reverse pass, and a maker of the reverse-over-reverse fallback."""
    gradient = func_grad(scalar, argnums=tuple(range(len(diff))))

    def forward_over_reverse(*vector: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(func_jvp(gradient, diff, vector)[1])

    def reverse_over_reverse() -> Pass:
        _, pullback = func_vjp(gradient, *diff)
        return lambda *vector: tuple(pullback(vector))

    return forward_over_reverse, reverse_over_reverse


def _run_second_order(
    run: Run,
    first: Pass,
    fallback: Callable[[], Pass],
    rows: Basis | GivenRows,
    *,
    chunk_size: int,
) -> tuple[tuple[torch.Tensor, ...], str]:
    """Push ``rows`` through ``first`` (forward mode inside, so under the process lock),
    or through ``fallback()`` when an op has no forward-mode rule."""
    try:
        with FORWARD_AD_LOCK:
            values, report = run_passes(
                first, rows, chunk_size=chunk_size, check=True, reraise=missing_forward_rule
            )
        run.vectorized, run.fallback_reason = report.vectorized, report.fallback_reason
        return values, "forward-over-reverse"
    except Exception as exc:
        if not missing_forward_rule(exc):
            raise
        reason = f"no forward-mode rule ({str(exc).splitlines()[0][:200]})"
        values, report = run_passes(fallback(), rows, chunk_size=chunk_size, check=True)
        run.fall_back(f"{reason}; used reverse-over-reverse", vectorized=report.vectorized)
        return values, "reverse-over-reverse"


def _vectors(
    vectors: Sequence[torch.Tensor], diff: Outputs, batched: bool
) -> tuple[GivenRows, int]:
    vectors = tuple(vectors)
    if batched:
        k = batch_size_of("vectors", vectors)
        check_like("vectors", [v[0] for v in vectors], diff, "differentiated input")
        return GivenRows(vectors), k
    check_like("vectors", list(vectors), diff, "differentiated input")
    return GivenRows(tuple(v.unsqueeze(0) for v in vectors)), 1


def hessian_vector_products(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    batched: bool = False,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """``H·v`` of a scalar function at ``inputs``, or ``k`` of them in one call.

    Args:
        fn: the model method; must return one scalar.
        inputs: the point, one tensor per positional input.
        vectors: one per differentiated input (``wrt`` order), shaped like it; with
            ``batched``, each has a leading dimension ``k``.
        wrt: indices of the inputs to differentiate; default every floating input.
        batched: ``k`` products in one vectorized call.
        memory_meter: how CPU peak memory is measured.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` whose ``values`` hold ``H·v`` split per differentiated
        input (its shape; a leading ``k`` when batched); ``outputs`` is ``f(x)``.

    >>> r = hessian_vector_products(lambda x: (x**3).sum(), [torch.tensor([1.0, 2.0])],
    ...                             [torch.tensor([1.0, 1.0])])
    >>> r.values  # H = diag(6x)
    (tensor([ 6., 12.]),)
    """
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    diff = tuple(inputs[j] for j in chosen)
    g = BoundMethod(fn, inputs, chosen, method)
    rows, k = _vectors(vectors, diff, batched)
    with engine_call(inputs, memory_meter) as run:
        run.batch_size = k if batched else 0
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            scalar, outputs = _scalar(g, diff, "a Hessian-vector product")
        run.forward_seconds = t_forward.seconds
        first, fallback = _gradient_passes(scalar, diff)
        with (
            user_code(f"differentiating method {method!r} twice", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            values, how = _run_second_order(run, first, fallback, rows, chunk_size=k)
        run.derivative_seconds = t_derivative.seconds
    if not batched:
        values = tuple(v[0] for v in values)
    mode = "forward" if how == "forward-over-reverse" else "reverse"
    plan = ModePlan(mode, k, f"hvp: {k} {how} product(s)")
    return finish(
        run, plan, n=numel(diff), m=1, outputs=outputs, tuple_output=g.tuple_output, values=values
    )


def hessian(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    chunk_size: int | None = None,
    max_elements: int | None = None,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """The full Hessian of a scalar function: n Hessian-vector products over the basis.

    Args:
        fn: the model method; must return one scalar.
        inputs: the point.
        wrt: indices of the inputs to differentiate; default every floating input.
        chunk_size: at most this many products per vectorized call.
        max_elements: refuse, before any pass, Hessians with more than this many entries.
        memory_meter: how CPU peak memory is measured.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` whose ``values`` are the blocks ``[j][k]`` (row-major over
        the differentiated inputs) of shape ``inputs[j].shape + inputs[k].shape``.

    >>> r = hessian(lambda x, y: (x * x * y).sum(), [torch.tensor([1.0]), torch.tensor([3.0])])
    >>> [b.item() for b in r.values], r.metrics.passes  # [[2y, 2x], [2x, 0]]
    ([6.0, 2.0, 2.0, 0.0], 2)
    """
    if chunk_size is not None and chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be >= 1 or unset; got {chunk_size}")
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    diff = tuple(inputs[j] for j in chosen)
    n = numel(diff)
    if max_elements is not None and n * n > max_elements:
        raise ResourceExhausted(
            f"the Hessian would have n*n = {n}*{n} = {n * n} entries, above the limit of "
            f"{max_elements} (--max-tensor-elements); differentiate fewer inputs (wrt) or "
            "ask for Hessian-vector products",
            reason=Reason.TENSOR_TOO_LARGE,
            elements=n * n,
            limit_elements=max_elements,
        )
    g = BoundMethod(fn, inputs, chosen, method)
    with engine_call(inputs, memory_meter) as run:
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            scalar, outputs = _scalar(g, diff, "a Hessian")
        run.forward_seconds = t_forward.seconds
        first, fallback = _gradient_passes(scalar, diff)
        with (
            user_code(f"differentiating method {method!r} twice", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            columns, how = _run_second_order(
                run, first, fallback, Basis(diff), chunk_size=min(n, chunk_size or n) or 1
            )
        run.derivative_seconds = t_derivative.seconds
        run.chunks = -(-n // (chunk_size or n)) if n else 0
        run.chunk_size = chunk_size or n
    # pass r is H·e_r, split per input: the forward-mode layout of a Jacobian of the gradient
    blocks = blocks_from_passes("forward", columns, diff, diff, None) if n else []
    mode = "forward" if how == "forward-over-reverse" else "reverse"
    plan = ModePlan(mode, n, f"hessian: n = {n} {how} passes (one per input element)")
    return finish(
        run, plan, n=n, m=1, outputs=outputs, tuple_output=g.tuple_output, values=tuple(blocks)
    )


def gauss_newton_vector_products(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    batched: bool = False,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """``Jᵀ(J·v)``, the Gauss–Newton matrix times ``v``, for functions of any output shape.

    Arguments as :func:`hessian_vector_products`; ``values`` are per differentiated input.

    >>> r = gauss_newton_vector_products(lambda x: 2 * x, [torch.ones(2)], [torch.tensor([1.0, 0.0])])
    >>> r.values  # JᵀJ = 4·I
    (tensor([4., 0.]),)
    """
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    diff = tuple(inputs[j] for j in chosen)
    g = BoundMethod(fn, inputs, chosen, method)
    rows, k = _vectors(vectors, diff, batched)
    with engine_call(inputs, memory_meter) as run:
        run.batch_size = k if batched else 0
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            outputs, pullback = func_vjp(g, *diff)
        run.forward_seconds = t_forward.seconds
        check_floating_outputs(outputs, method)

        def product(*vector: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(pullback(tuple(func_jvp(g, diff, vector)[1])))

        def reverse_only() -> Pass:  # J·v as the VJP of the VJP when forward mode is missing
            zeros = tuple(torch.zeros_like(o) for o in outputs)
            _, transpose = func_vjp(pullback, zeros)
            return lambda *vector: tuple(pullback(tuple(transpose(vector)[0])))

        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            values, how = _run_second_order(run, product, reverse_only, rows, chunk_size=k)
        run.derivative_seconds = t_derivative.seconds
    if not batched:
        values = tuple(v[0] for v in values)
    mode = "forward" if how == "forward-over-reverse" else "reverse"
    reason = (
        f"gnvp: {k} product(s), each one JVP then one VJP"
        if mode == "forward"
        else (f"gnvp: {k} product(s), J·v as the VJP of the VJP (no forward-mode rule)")
    )
    return finish(
        run,
        ModePlan(mode, 2 * k, reason),
        n=numel(diff),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
    )
