"""JVPs, VJPs, full Jacobians and parameter gradients of a model method, in pure torch.

Every function takes the callable first, then its inputs, then keyword-only options,
like torch.func. Each returns an :class:`EngineResult` whose ``values`` are:

* :func:`jvp`: one tensor per output, ``J·v`` with the output's shape;
* :func:`vjp`: one tensor per differentiated input, ``uᵀ·J`` with the input's shape;
* :func:`jacobian`: blocks ``[i][j]`` = d output ``i`` / d input ``wrt[j]`` of shape
  ``output_i.shape + input_j.shape``, flattened row-major (index ``i * len(wrt) + j``);
* :func:`parameter_gradients`: one gradient per named parameter (``names``).

>>> import torch
>>> r = jacobian(lambda x: x ** 2, [torch.tensor([1.0, 2.0])])
>>> r.values[0]
tensor([[2., 0.],
        [0., 4.]])
>>> r.metrics.mode, r.metrics.passes
('reverse', 2)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    safe_execution,
    user_code,
)
from jacserve.server.engine._measure import measure_peak_memory, stopwatch
from jacserve.server.engine.planner import Mode, ModePlan, RequestedMode, plan_mode
from jacserve.server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

__all__ = ["EngineMetrics", "EngineResult", "jacobian", "jvp", "parameter_gradients", "vjp"]


# NOTE: [Forward-mode AD is process-global]
# torch.func.jvp keeps its nesting depth in a module-level counter and enters
# torch.autograd.forward_ad's dual level, which is also process-global: when two threads
# run forward mode at once, one can skip entering the level or clear the other's tangents
# on exit. Measured here on torch 2.13: 3 of 120 forward-mode Jacobians of an eager
# Linear+Tanh computed from 4 threads came back wrong, with no error. Every forward-mode
# computation therefore holds this lock; reverse mode keeps its state per thread and
# runs concurrently. Parallel forward mode needs separate processes.
_FORWARD_AD_LOCK = threading.Lock()


@dataclass(frozen=True)
class EngineMetrics:
    """How a derivative was computed and what it cost (times in seconds)."""

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


@dataclass(frozen=True)
class EngineResult:
    """Outputs of the method, the derivative tensors, and metrics (see module docstring)."""

    outputs: Outputs
    tuple_output: bool
    values: tuple[torch.Tensor, ...]
    metrics: EngineMetrics
    names: tuple[str, ...] = ()


@dataclass
class _Run:
    """Mutable record of one engine call, frozen into :class:`EngineMetrics` at the end."""

    device: torch.device
    forward_seconds: float = 0.0
    derivative_seconds: float = 0.0
    vectorized: bool = True
    fallback_reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def fall_back(self, reason: str, *, vectorized: bool) -> None:
        self.vectorized = vectorized
        self.fallback_reason = "; ".join(r for r in (self.fallback_reason, reason) if r)
        self.warnings.append(reason)


@contextlib.contextmanager
def _engine_call(inputs: Sequence[torch.Tensor]) -> Iterator[tuple[_Run, Any]]:
    device = inputs[0].device if inputs else torch.device("cpu")
    run = _Run(device=device)
    with safe_execution(), torch.no_grad(), measure_peak_memory(device) as peak:
        yield run, peak


def _finish(
    run: _Run,
    peak: Any,
    plan: ModePlan,
    *,
    n: int,
    m: int,
    outputs: Outputs,
    tuple_output: bool,
    values: Sequence[torch.Tensor],
    names: Sequence[str] = (),
) -> EngineResult:
    nonfinite = sum(
        int((~torch.isfinite(t)).sum()) for t in (*outputs, *values) if t.is_floating_point()
    )
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
        peak_memory_bytes=peak.bytes,
        memory_method=peak.method,
        nonfinite_count=nonfinite,
        warnings=tuple(warnings),
        device=str(run.device),
    )
    return EngineResult(
        outputs=tuple(o.detach() for o in outputs),
        tuple_output=tuple_output,
        values=tuple(v.detach() for v in values),
        metrics=metrics,
        names=tuple(names),
    )


def _missing_forward_rule(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, NotImplementedError | RuntimeError) and (
        "forward AD" in text or "forward-mode" in text or "forward mode" in text
    )


def _check_floating_outputs(outputs: Outputs, method: str) -> None:
    for i, out in enumerate(outputs):
        if not out.is_floating_point():
            raise InvalidArgument(
                f"output {i} of method {method!r} has dtype {str(out.dtype).removeprefix('torch.')}; "
                "only floating-point outputs can be differentiated"
            )


def _basis(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Rows of the identity over the concatenated elements, split per tensor and reshaped."""
    total = numel(tensors)
    out, offset = [], 0
    for t in tensors:
        rows = torch.zeros((total, t.numel()), dtype=t.dtype, device=t.device)
        rows[offset : offset + t.numel()].fill_diagonal_(1)
        out.append(rows.reshape((total, *t.shape)))
        offset += t.numel()
    return tuple(out)


def _batched(
    run: _Run,
    single: Callable[..., tuple[torch.Tensor, ...]],
    batches: tuple[torch.Tensor, ...],
    chunk_size: int | None,
) -> tuple[torch.Tensor, ...]:
    """Apply ``single`` to each row of ``batches``: one checked vmap call, else a loop.

    See NOTE: [Vectorization check].
    """
    try:
        stacked = vmap(single, chunk_size=chunk_size)(*batches)
    except Exception as exc:
        if _missing_forward_rule(exc):
            raise
        run.fall_back(
            f"vmap failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); "
            "computed the passes one at a time",
            vectorized=False,
        )
    else:
        if _agrees_with_one_unbatched_pass(single, batches, stacked):
            return stacked
        run.fall_back(
            "the vectorized passes disagreed with an unbatched check pass (a batching-rule "
            "bug in torch for an op of this model); computed the passes one at a time",
            vectorized=False,
        )
    rows = [single(*(b[k] for b in batches)) for k in range(batches[0].shape[0])]
    return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


# NOTE: [Vectorization check]
# vmap relies on a batching rule per op, and a wrong rule gives a wrong Jacobian with no
# error: in torch 2.13, vmap over the VJP of torch.cdist (and so torch.func.jacrev) is
# off by O(1). Derivative passes are linear in their basis vector, so one unbatched pass
# on a random combination w of the basis vectors must equal the same combination of the
# vectorized results. That costs one extra pass; a mismatch beyond sqrt(eps) of the
# results' scale sends the request down the loop path, which uses no batching rules.
def _agrees_with_one_unbatched_pass(
    single: Callable[..., tuple[torch.Tensor, ...]],
    batches: tuple[torch.Tensor, ...],
    stacked: tuple[torch.Tensor, ...],
) -> bool:
    count = batches[0].shape[0]
    if count < 2:
        return True
    generator = torch.Generator().manual_seed(count)
    weights = torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1

    def combine(batch: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        w = weights.to(device=batch.device, dtype=batch.dtype)
        return torch.tensordot(w.abs() if absolute else w, batch.abs() if absolute else batch, 1)

    checks = single(*(combine(b) for b in batches))
    for check, batch in zip(checks, stacked, strict=True):
        expected = combine(batch)
        scale = combine(batch, absolute=True)
        tolerance = torch.finfo(batch.dtype).eps ** 0.5
        finite = torch.isfinite(expected) & torch.isfinite(check)
        error = (check - expected).abs()
        if bool((error > tolerance * (scale + 1e-30))[finite].any()):
            return False
    return True


def _blocks_from_forward(
    columns: tuple[torch.Tensor, ...], outputs: Outputs, inputs: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Turn per-output (n, *out_i) JVP batches into [i][j] blocks of shape out_i + in_j."""
    blocks = []
    for col, out in zip(columns, outputs, strict=True):
        offset = 0
        for inp in inputs:
            part = col[offset : offset + inp.numel()].movedim(0, -1)
            blocks.append(part.reshape((*out.shape, *inp.shape)))
            offset += inp.numel()
    return blocks


def _blocks_from_reverse(
    rows: tuple[torch.Tensor, ...], outputs: Outputs, inputs: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Turn per-input (m, *in_j) VJP batches into [i][j] blocks of shape out_i + in_j."""
    blocks = []
    offset = 0
    for out in outputs:
        for row, inp in zip(rows, inputs, strict=True):
            part = row[offset : offset + out.numel()]
            blocks.append(part.reshape((*out.shape, *inp.shape)))
        offset += out.numel()
    return blocks


def jvp(
    fn: Callable[..., Any],
    primals: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    method: str = "forward",
) -> EngineResult:
    """Jacobian-vector product ``J·v`` at ``primals``.

    Args:
        fn: the model method; takes ``len(primals)`` tensors, returns a tensor or tuple.
        primals: the point to differentiate at, one tensor per positional input.
        tangents: one tangent per differentiated input (``wrt`` order), same shape and dtype.
        wrt: indices of the inputs to differentiate; default every floating input.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` with ``values`` = one JVP per output (the output's shape).
        When an op has no forward-mode rule, the JVP is computed as the VJP of the VJP
        (two reverse passes) and ``metrics.fallback_reason`` says so.

    Raises:
        InvalidArgument: bad ``wrt`` or tangents; ``ModelExecutionError`` if ``fn`` raises.

    >>> r = jvp(lambda x: torch.sin(x), [torch.zeros(2)], [torch.ones(2)])
    >>> r.values[0]
    tensor([1., 1.])
    """
    primals = tuple(primals)
    chosen = resolve_wrt(primals, wrt)
    diff = tuple(primals[j] for j in chosen)
    check_like("tangents", list(tangents), diff, "differentiated input")
    tangents = tuple(tangents)
    g = BoundMethod(fn, primals, chosen, method)
    plan = ModePlan("forward", 1, "jvp: one forward-mode pass")
    with _engine_call(primals) as (run, peak):
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch() as t_derivative,
        ):
            try:
                with _FORWARD_AD_LOCK:
                    outputs, values = func_jvp(g, diff, tangents)
            except Exception as exc:
                if not _missing_forward_rule(exc):
                    raise
                outputs, values, plan = _jvp_in_reverse_mode(run, g, diff, tangents, exc)
        run.derivative_seconds = t_derivative.seconds
    _check_floating_outputs(outputs, method)
    return _finish(
        run,
        peak,
        plan,
        n=numel(diff),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
    )


def _jvp_in_reverse_mode(
    run: _Run, g: BoundMethod, diff: Outputs, tangents: Outputs, cause: Exception
) -> tuple[Outputs, Outputs, ModePlan]:
    """J·v without forward mode: the VJP of the VJP (2 passes), else the reverse Jacobian."""
    reason = f"no forward-mode rule ({str(cause).splitlines()[0][:200]})"
    outputs, pullback = func_vjp(g, *diff)
    _check_floating_outputs(outputs, g.method)
    try:
        zeros = tuple(torch.zeros_like(o) for o in outputs)
        _, pullback_of_pullback = func_vjp(pullback, zeros)
        values = pullback_of_pullback(tangents)[0]
        run.fall_back(f"{reason}; computed J·v as the VJP of the VJP", vectorized=True)
        return outputs, values, ModePlan("reverse", 2, "jvp: reverse-over-reverse")
    except Exception as exc:
        if not isinstance(exc, NotImplementedError | RuntimeError):
            raise
    blocks = _reverse_jacobian(run, g, diff, outputs, None)
    values = tuple(
        sum(
            blocks[i * len(diff) + j].reshape(out.numel(), -1) @ t.reshape(-1)
            for j, t in enumerate(tangents)
        ).reshape(out.shape)
        for i, out in enumerate(outputs)
    )
    run.fall_back(
        f"{reason}, and no double-backward rule; computed J·v from the reverse-mode Jacobian",
        vectorized=run.vectorized,
    )
    m = numel(outputs)
    return outputs, values, ModePlan("reverse", m, f"jvp: {m} reverse passes (full Jacobian)")


def vjp(
    fn: Callable[..., Any],
    primals: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    method: str = "forward",
) -> EngineResult:
    """Vector-Jacobian product ``uᵀ·J`` at ``primals``.

    Args:
        fn: the model method.
        primals: the point to differentiate at, one tensor per positional input.
        cotangents: one cotangent per output, same shape and dtype as that output.
        wrt: indices of the inputs to differentiate; default every floating input.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` with ``values`` = one VJP per differentiated input.

    Raises:
        InvalidArgument: bad ``wrt`` or cotangents; ``ModelExecutionError`` if ``fn`` raises.

    >>> vjp(lambda x: 3 * x, [torch.ones(2)], [torch.tensor([1.0, 2.0])]).values[0]
    tensor([3., 6.])
    """
    primals = tuple(primals)
    chosen = resolve_wrt(primals, wrt)
    diff = tuple(primals[j] for j in chosen)
    g = BoundMethod(fn, primals, chosen, method)
    plan = ModePlan("reverse", 1, "vjp: one reverse-mode pass")
    with _engine_call(primals) as (run, peak):
        with user_code(f"calling method {method!r}"), stopwatch() as t_forward:
            outputs, pullback = func_vjp(g, *diff)
        run.forward_seconds = t_forward.seconds
        _check_floating_outputs(outputs, method)
        check_like("cotangents", list(cotangents), outputs, "output")
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch() as t_derivative,
        ):
            values = pullback(tuple(cotangents))
        run.derivative_seconds = t_derivative.seconds
    return _finish(
        run,
        peak,
        plan,
        n=numel(diff),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
    )


def jacobian(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    *,
    wrt: Sequence[int] | None = None,
    mode: RequestedMode = "auto",
    chunk_size: int | None = None,
    max_elements: int | None = None,
    method: str = "forward",
) -> EngineResult:
    """Full Jacobian at ``inputs`` in forward, reverse or automatically chosen mode.

    The passes run as one ``vmap`` over the basis vectors (``chunk_size`` rows at a
    time if given). Where an op has no batching rule the passes run one at a time; where
    it has no forward-mode rule, forward mode falls back to reverse. Both are reported
    in ``metrics.fallback_reason``.

    Args:
        fn: the model method.
        inputs: the point to differentiate at, one tensor per positional input.
        wrt: indices of the inputs to differentiate; default every floating input.
        mode: ``"auto"`` (see :func:`~jacserve.server.engine.planner.plan_mode`),
            ``"forward"`` or ``"reverse"``.
        chunk_size: basis vectors per vectorized call; ``None`` = all at once.
        max_elements: refuse, after the forward evaluation and before any derivative
            pass, a Jacobian with more elements than this.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` whose ``values`` are the blocks ``[i][j]`` flattened
        row-major; block ``(i, j)`` has shape ``outputs[i].shape + inputs[wrt[j]].shape``.

    Raises:
        InvalidArgument: bad ``wrt``, ``mode`` or ``chunk_size``, or non-floating outputs;
            ``ModelExecutionError`` if ``fn`` raises.
        ResourceExhausted: the Jacobian would have more than ``max_elements`` elements.

    >>> r = jacobian(lambda a, b: a * b, [torch.tensor(2.0), torch.tensor(3.0)], mode="forward")
    >>> r.values, r.metrics.passes
    ((tensor(3.), tensor(2.)), 2)
    """
    if chunk_size is not None and chunk_size < 1:
        raise InvalidArgument(f"chunk_size must be >= 1 or unset; got {chunk_size}")
    inputs = tuple(inputs)
    chosen = resolve_wrt(inputs, wrt)
    diff = tuple(inputs[j] for j in chosen)
    g = BoundMethod(fn, inputs, chosen, method)
    with _engine_call(inputs) as (run, peak):
        with user_code(f"calling method {method!r}"), stopwatch() as t_forward:
            outputs = g(*diff)
        run.forward_seconds = t_forward.seconds
        _check_floating_outputs(outputs, method)
        n, m = numel(diff), numel(outputs)
        if max_elements is not None and n * m > max_elements:
            raise ResourceExhausted(
                f"the Jacobian would have n*m = {n}*{m} = {n * m} elements, above the limit of "
                f"{max_elements} (--max-tensor-elements); differentiate fewer inputs (wrt)"
            )
        try:
            plan = plan_mode(n, m, mode)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch() as t_derivative,
        ):
            blocks = None
            if plan.mode == "forward":
                try:
                    with _FORWARD_AD_LOCK:
                        blocks = _forward_jacobian(run, g, diff, outputs, chunk_size)
                except Exception as exc:
                    if not _missing_forward_rule(exc):
                        raise
                    reason = f"no forward-mode rule ({str(exc).splitlines()[0][:200]})"
                    run.fall_back(f"{reason}; used reverse mode", vectorized=run.vectorized)
                    plan = ModePlan("reverse", m, f"{plan.reason}; {reason}, so reverse")
            if blocks is None:
                blocks = _reverse_jacobian(run, g, diff, outputs, chunk_size)
        run.derivative_seconds = t_derivative.seconds
    return _finish(
        run, peak, plan, n=n, m=m, outputs=outputs, tuple_output=g.tuple_output, values=blocks
    )


def _forward_jacobian(
    run: _Run, g: BoundMethod, diff: Outputs, outputs: Outputs, chunk_size: int | None
) -> list[torch.Tensor]:
    if numel(diff) == 0:
        return _empty_blocks(outputs, diff)

    def push_forward(*tangent: torch.Tensor) -> Outputs:
        return func_jvp(g, diff, tangent)[1]

    columns = _batched(run, push_forward, _basis(diff), chunk_size)
    return _blocks_from_forward(columns, outputs, diff)


def _reverse_jacobian(
    run: _Run, g: BoundMethod, diff: Outputs, outputs: Outputs, chunk_size: int | None
) -> list[torch.Tensor]:
    if numel(outputs) == 0:
        return _empty_blocks(outputs, diff)
    _, pullback = func_vjp(g, *diff)

    def pull_back(*cotangent: torch.Tensor) -> Outputs:
        return pullback(cotangent)

    rows = _batched(run, pull_back, _basis(outputs), chunk_size)
    return _blocks_from_reverse(rows, outputs, diff)


def _empty_blocks(outputs: Outputs, diff: Outputs) -> list[torch.Tensor]:
    return [
        torch.zeros((*out.shape, *inp.shape), dtype=out.dtype, device=out.device)
        for out in outputs
        for inp in diff
    ]


def parameter_gradients(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    parameters: Mapping[str, torch.Tensor],
    *,
    cotangents: Sequence[torch.Tensor] | None = None,
    method: str = "forward",
) -> EngineResult:
    """Gradients of ``cotangent · output`` (or of a scalar output) w.r.t. named parameters.

    The parameters must be the tensors ``fn`` reads (leaf tensors with
    ``requires_grad=True``); they are not modified and no ``.grad`` is written.

    Args:
        fn: the model method.
        inputs: one tensor per positional input.
        parameters: name → parameter tensor, the parameters to differentiate.
        cotangents: one per output, same shape and dtype; ``None`` requires a single
            one-element output (its gradient is taken directly).
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` with ``names`` = parameter names and ``values`` = their
        gradients (zeros, with a warning, for parameters that do not affect the output).

    Raises:
        InvalidArgument: bad cotangents, or no cotangent for a non-scalar output.
        FailedPrecondition: ``parameters`` is empty.

    >>> w = torch.tensor([2.0, 3.0], requires_grad=True)
    >>> r = parameter_gradients(lambda x: (w * x).sum(), [torch.tensor([5.0, 7.0])], {"w": w})
    >>> r.names, r.values
    (('w',), (tensor([5., 7.]),))
    """
    if not parameters:
        raise FailedPrecondition(
            "the model has no floating-point parameters to differentiate (or none matched "
            "the requested names); use vjp for gradients with respect to inputs"
        )
    inputs = tuple(inputs)
    names = tuple(parameters)
    leaves = tuple(parameters[name] for name in names)
    g = BoundMethod(fn, inputs, (), method)
    plan = ModePlan("reverse", 1, "parameter gradients: one reverse pass of cotangent · output")
    with _engine_call(inputs) as (run, peak), torch.enable_grad():
        with user_code(f"calling method {method!r}"), stopwatch() as t_forward:
            outputs = g()
        run.forward_seconds = t_forward.seconds
        _check_floating_outputs(outputs, method)
        if cotangents is None:
            if len(outputs) != 1 or outputs[0].numel() != 1:
                shapes = [list(o.shape) for o in outputs]
                raise InvalidArgument(
                    "expected cotangents (one per output) because the method does not return "
                    f"a single scalar; got outputs of shapes {shapes}"
                )
            cotangents = (torch.ones_like(outputs[0]),)
        check_like("cotangents", list(cotangents), outputs, "output")
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch() as t_derivative,
        ):
            values = _grads_or_zeros(run, outputs, leaves, names, tuple(cotangents))
        run.derivative_seconds = t_derivative.seconds
    return _finish(
        run,
        peak,
        plan,
        n=numel(leaves),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
        names=names,
    )


def _grads_or_zeros(
    run: _Run, outputs: Outputs, leaves: Outputs, names: tuple[str, ...], cotangents: Outputs
) -> tuple[torch.Tensor, ...]:
    connected = [i for i, o in enumerate(outputs) if o.requires_grad]
    grads: Sequence[torch.Tensor | None] = [None] * len(leaves)
    if connected:
        grads = torch.autograd.grad(
            [outputs[i] for i in connected],
            leaves,
            grad_outputs=[cotangents[i] for i in connected],
            allow_unused=True,
        )
    unused = [name for name, grad in zip(names, grads, strict=True) if grad is None]
    if unused:
        run.warnings.append(
            f"{len(unused)} parameter(s) do not affect the outputs (gradient is zero): "
            + ", ".join(unused[:10])
            + (" …" if len(unused) > 10 else "")
        )
    return tuple(
        torch.zeros_like(leaf) if grad is None else grad
        for leaf, grad in zip(leaves, grads, strict=True)
    )
