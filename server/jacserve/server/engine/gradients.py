"""Gradients with respect to a model's named parameters.

>>> import torch
>>> w = torch.tensor([2.0, 3.0], requires_grad=True)
>>> r = parameter_gradients(lambda x: (w * x).sum(), [torch.tensor([5.0, 7.0])], {"w": w})
>>> r.names, r.values
(('w',), (tensor([5., 7.]),))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from jacserve.server.engine._function import (
    DERIVATIVE_HINT,
    BoundMethod,
    Outputs,
    check_like,
    numel,
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
from jacserve.server.engine.planner import ModePlan
from jacserve.server.errors import FailedPrecondition, InvalidArgument

__all__ = ["parameter_gradients"]


def parameter_gradients(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    parameters: Mapping[str, torch.Tensor],
    *,
    cotangents: Sequence[torch.Tensor] | None = None,
    memory_meter: str = "rss",
    method: str = "forward",
) -> EngineResult:
    """Gradients of ``cotangent · output`` (or of a scalar output) w.r.t. named parameters.

    The parameters must be the tensors ``fn`` reads (leaf tensors with
    ``requires_grad=True``); they are not modified and no ``.grad`` is written, so
    concurrent calls on one model do not interfere. (``torch.func.functional_call``
    cannot be used instead: it refuses ScriptModules.)

    Args:
        fn: the model method.
        inputs: one tensor per positional input.
        parameters: name → parameter tensor, the parameters to differentiate.
        cotangents: one per output, same shape and dtype; ``None`` requires a single
            one-element output (its gradient is taken directly).
        memory_meter: ``"rss"`` or ``"tensors"``: how CPU peak memory is measured (see
            NOTE: [Peak memory on CPU] in ``_measure``); CUDA uses the allocator.
        method: the method's name, for messages.

    Returns:
        :class:`EngineResult` with ``names`` = parameter names and ``values`` = their
        gradients (zeros, with a warning, for parameters that do not affect the output).

    Raises:
        InvalidArgument: bad cotangents, or no cotangent for a non-scalar output.
        FailedPrecondition: ``parameters`` is empty.

    >>> w = torch.tensor([2.0], requires_grad=True)
    >>> parameter_gradients(lambda x: w * x, [torch.tensor([3.0])], {"w": w},
    ...                     cotangents=[torch.tensor([1.0])]).values
    (tensor([3.]),)
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
    with engine_call(inputs, memory_meter) as run, torch.enable_grad():
        with user_code(f"calling method {method!r}"), stopwatch(run.device) as t_forward:
            outputs = g()
        run.forward_seconds = t_forward.seconds
        check_floating_outputs(outputs, method)
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
            stopwatch(run.device) as t_derivative,
        ):
            values = _grads_or_zeros(run, outputs, leaves, names, tuple(cotangents))
        run.derivative_seconds = t_derivative.seconds
    return finish(
        run,
        plan,
        n=numel(leaves),
        m=numel(outputs),
        outputs=outputs,
        tuple_output=g.tuple_output,
        values=values,
        names=names,
    )


def _grads_or_zeros(
    run: Run, outputs: Outputs, leaves: Outputs, names: tuple[str, ...], cotangents: Outputs
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
