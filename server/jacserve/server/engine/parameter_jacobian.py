"""Jacobians with respect to a model's named parameters (``ParameterJacobian``).

NOTE: [Parameter Jacobians without functional_call]
The parameters of a loaded model are leaf tensors with ``requires_grad=True`` that the
model reads (see ``LoadedModel``); ``torch.func.functional_call`` cannot swap them for
ScriptModules, and swapping them in place would race with concurrent calls on the same
model. So, as :func:`~jacserve.server.engine.gradients.parameter_gradients` does, one
evaluation records an ordinary autograd tape and the Jacobian is read off it:

* **reverse** (M passes, one per output element): ``torch.autograd.grad`` of the
  outputs with batched one-hot cotangents (``is_grads_batched``, i.e. vmap over the
  backward), in chunks; a model whose backward cannot be vmapped falls back to one
  pass per row (``fallback_reason``).
* **forward** (P passes, one per parameter element): the JVP by double backward. With a
  dummy cotangent u, g(u) = Jᵀu is linear in u, so the VJP of g with tangent v is J v;
  one backward with ``create_graph`` and then batched backwards of g give the columns.
  A model whose backward has no derivative of its own falls back to reverse.

Auto chooses the mode with fewer passes by the engine's prior
(:func:`~jacserve.server.engine.planner.prior_mode`, with n = P parameter elements and
m = M output elements), without measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    Outputs,
    numel,
    summarize_error,
    user_code,
)
from jacserve.server.engine._measure import stopwatch
from jacserve.server.engine._run import (
    EngineResult,
    Run,
    check_floating_outputs,
    engine_call,
    finish,
)
from jacserve.server.engine.planner import ModePlan, RequestedMode, prior_mode
from jacserve.server.errors import FailedPrecondition, InvalidArgument, Reason, ResourceExhausted

__all__ = ["parameter_jacobian"]

_CHUNK_ELEMENTS = 1 << 22
"""Elements of the batched cotangents (or tangents) of one vectorized backward."""


def parameter_jacobian(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    parameters: Mapping[str, torch.Tensor],
    *,
    mode: RequestedMode = "auto",
    max_elements: int | None = None,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """The Jacobian of the outputs w.r.t. named parameters (see NOTE: [Parameter
    Jacobians without functional_call]).

    Args:
        fn: the model method.
        inputs: one tensor per positional input (held fixed).
        parameters: name → parameter tensor (leaves with ``requires_grad``, read by ``fn``).
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        max_elements: cap on the Jacobian's elements (M × P).
        memory_meter: ``"rss"`` or ``"tensors"`` (see ``_measure``).
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` whose ``values`` are the blocks [i][p] = ∂output_i/∂param_p
        of shape ``output_i.shape + param_p.shape``, row-major (index i × P + p), in the
        promoted dtype of the outputs and parameters, and ``names`` the parameter names.
        Parameters that do not affect the outputs get zero blocks and a warning.

    Raises:
        FailedPrecondition: ``parameters`` is empty.
        ResourceExhausted: the Jacobian would exceed ``max_elements`` (TENSOR_TOO_LARGE).

    >>> w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    >>> r = parameter_jacobian(lambda x: w @ x, [torch.tensor([5.0, 7.0])], {"w": w})
    >>> r.values[0].shape, r.values[0][1].tolist(), r.metrics.mode
    (torch.Size([2, 2, 2]), [[0.0, 0.0], [5.0, 7.0]], 'reverse')
    >>> parameter_jacobian(lambda x: w @ x, [torch.ones(2)], {"w": w}, mode="forward").values[0][0]
    tensor([[1., 1.],
            [0., 0.]])
    """
    if not parameters:
        raise FailedPrecondition(
            "the model has no floating-point parameters to differentiate (or none matched "
            "the requested names); use jacobian for derivatives with respect to inputs"
        )
    names = tuple(parameters)
    leaves = tuple(parameters[name] for name in names)
    g = BoundMethod(fn, tuple(inputs), (), method)
    with engine_call(inputs, memory_meter) as run, torch.enable_grad():
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            outputs = g()
        run.forward_seconds = t_forward.seconds
        check_floating_outputs(outputs, method)
        p, m = numel(leaves), numel(outputs)
        if max_elements is not None and p * m > max_elements:
            raise ResourceExhausted(
                f"the parameter Jacobian would have m*P = {m}*{p} = {m * p} elements, above "
                f"the limit of {max_elements} (--max-tensor-elements); name fewer parameters",
                reason=Reason.TENSOR_TOO_LARGE,
                elements=m * p,
                limit_elements=max_elements,
            )
        plan = _plan(mode, p, m)
        dtype = _dtype([*outputs, *leaves])
        with (
            user_code(f"differentiating method {method!r}", DERIVATIVE_HINT),
            stopwatch(run.device) as t_derivative,
        ):
            flat, plan = _flat_jacobian(run, plan, outputs, leaves, names, dtype)
        run.derivative_seconds = t_derivative.seconds
    values = _blocks(flat, outputs, leaves)
    return finish(
        run,
        plan,
        n=p,
        m=m,
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
        names=names,
    )


def _plan(mode: RequestedMode, p: int, m: int) -> ModePlan:
    if mode == "forward":
        return ModePlan("forward", p, "requested forward (double backward, one pass per parameter)")
    if mode == "reverse":
        return ModePlan("reverse", m, "requested reverse (one pass per output element)")
    if mode != "auto":
        raise InvalidArgument(f"mode: expected 'auto', 'forward' or 'reverse'; got {mode!r}")
    chosen, why = prior_mode(p, m)
    return ModePlan(chosen, p if chosen == "forward" else m, f"auto: {chosen} ({why})")


def _dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _chunks(total: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _one_hot(start: int, stop: int, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Rows ``start:stop`` of the identity over the flattened ``like``, split and shaped
    like each tensor of ``like`` (with a leading row axis)."""
    total = numel(like)
    eye = torch.zeros(stop - start, total, dtype=like[0].dtype, device=like[0].device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    parts, offset = [], 0
    for t in like:
        parts.append(
            eye[:, offset : offset + t.numel()].reshape(stop - start, *t.shape).to(t.dtype)
        )
        offset += t.numel()
    return parts


def _flat_jacobian(
    run: Run,
    plan: ModePlan,
    outputs: Outputs,
    leaves: Outputs,
    names: tuple[str, ...],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, ModePlan]:
    """The Jacobian as one ``[M, P]`` tensor (and the plan that ran)."""
    m, p = numel(outputs), numel(leaves)
    flat = torch.zeros(m, p, dtype=dtype, device=run.device)
    connected = [i for i, o in enumerate(outputs) if o.requires_grad]
    if not connected or not m or not p:
        _warn_unused(run, names)
        return flat, plan
    outs = [outputs[i] for i in connected]
    rows = torch.cat(
        [torch.arange(_offsets(outputs)[i], _offsets(outputs)[i + 1]) for i in connected]
    )
    if plan.mode == "forward":
        try:
            _forward(run, outs, leaves, names, flat, rows)
            return flat, plan
        except RuntimeError as exc:
            reason = (
                f"forward mode (double backward) failed ({summarize_error(exc)}); "
                "computed in reverse mode"
            )
            run.fall_back(reason, vectorized=True)
            plan = ModePlan("reverse", m, f"{plan.reason}; {reason}")
    _reverse(run, outs, leaves, names, flat, rows)
    return flat, plan


def _offsets(tensors: Sequence[torch.Tensor]) -> list[int]:
    offsets = [0]
    for t in tensors:
        offsets.append(offsets[-1] + t.numel())
    return offsets


def _warn_unused(run: Run, unused: Sequence[str]) -> None:
    if unused:
        run.warnings.append(
            f"{len(unused)} parameter(s) do not affect the outputs (Jacobian is zero): "
            + ", ".join(unused[:10])
            + (" …" if len(unused) > 10 else "")
        )


def _grad(
    run: Run,
    outs: Sequence[torch.Tensor],
    wrt: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
) -> tuple[torch.Tensor | None, ...]:
    """Batched ``autograd.grad`` (rows of ``vectors``), one row at a time if vmap fails."""
    if run.vectorized:
        try:
            return torch.autograd.grad(
                outs, wrt, vectors, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError as exc:
            run.fall_back(
                f"the backward pass could not be vectorized ({summarize_error(exc)}); "
                "one pass at a time",
                vectorized=False,
            )
    rows = []
    for k in range(vectors[0].shape[0]):
        rows.append(
            torch.autograd.grad(
                outs, wrt, [v[k] for v in vectors], retain_graph=True, allow_unused=True
            )
        )
    return tuple(
        None if rows[0][j] is None else torch.stack([r[j] for r in rows])  # type: ignore[misc]
        for j in range(len(wrt))
    )


def _reverse(
    run: Run,
    outs: list[torch.Tensor],
    leaves: Outputs,
    names: tuple[str, ...],
    flat: torch.Tensor,
    rows: torch.Tensor,
) -> None:
    total, used = len(rows), [False] * len(leaves)
    columns = _offsets(leaves)
    for start, stop in _chunks(total, numel(leaves)):
        grads = _grad(run, outs, leaves, _one_hot(start, stop, outs))
        for j, grad in enumerate(grads):
            if grad is not None:
                used[j] = True
                flat[rows[start:stop], columns[j] : columns[j + 1]] = grad.reshape(
                    stop - start, -1
                ).to(flat.dtype)
        run.chunks = max(run.chunks, len(_chunks(total, numel(leaves))))
    _warn_unused(run, [n for n, u in zip(names, used, strict=True) if not u])


def _forward(
    run: Run,
    outs: list[torch.Tensor],
    leaves: Outputs,
    names: tuple[str, ...],
    flat: torch.Tensor,
    rows: torch.Tensor,
) -> None:
    dummies = [torch.zeros_like(o, requires_grad=True) for o in outs]
    pulled = torch.autograd.grad(outs, leaves, dummies, create_graph=True, allow_unused=True)
    used = [j for j, g in enumerate(pulled) if g is not None and g.requires_grad]
    _warn_unused(run, [n for j, n in enumerate(names) if j not in used])
    if not used:
        return
    columns = _offsets(leaves)
    out_offsets = _offsets(outs)
    for j in used:  # one leaf at a time: its tangents are one-hot in its own elements
        leaf = leaves[j]
        for start, stop in _chunks(leaf.numel(), len(rows)):
            (tangent,) = _one_hot(start, stop, [leaf])
            grads = _grad(run, [pulled[j]], dummies, [tangent])  # type: ignore[list-item]
            for i, grad in enumerate(grads):
                if grad is None:
                    continue
                block = grad.reshape(stop - start, -1).T.to(flat.dtype)
                span = rows[out_offsets[i] : out_offsets[i + 1]]
                flat[span, columns[j] + start : columns[j] + stop] = block


def _blocks(flat: torch.Tensor, outputs: Outputs, leaves: Outputs) -> list[torch.Tensor]:
    rows, columns = _offsets(outputs), _offsets(leaves)
    return [
        flat[rows[i] : rows[i + 1], columns[p] : columns[p + 1]]
        .reshape((*outputs[i].shape, *leaves[p].shape))
        .contiguous()
        for i in range(len(outputs))
        for p in range(len(leaves))
    ]
