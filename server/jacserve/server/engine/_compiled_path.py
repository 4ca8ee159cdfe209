"""A Jacobian served from a ready compiled program, when its plan is known without
evaluating the model.

See NOTE: [Compiled derivative programs] in ``compiled``.
"""

from __future__ import annotations

import torch

from jacserve.server.engine._autoplan import planned
from jacserve.server.engine._costbook import CostBook
from jacserve.server.engine._function import Outputs, numel
from jacserve.server.engine._measure import stopwatch
from jacserve.server.engine._request import call_signature, program_key
from jacserve.server.engine._run import Run, mode_lock
from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.compiled import CompiledPrograms
from jacserve.server.engine.planner import Mode, ModePlan, RequestedMode

__all__ = ["compiled_run"]


def compiled_run(
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
    signature = call_signature(method, inputs, wrt, False)
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
    fastest = compiled.fastest_ready([program_key(method, inputs, wrt, k) for k in modes])
    if fastest is None:
        run.compilation = compiled.lookup(program_key(method, inputs, wrt, plan.mode))[1]
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
            run.compilation = compiled.lookup(program_key(method, inputs, wrt, plan.mode))[1]
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
            mode_lock(plan.mode),
        ):
            jac, outputs = program(*inputs)
    except Exception as exc:  # never fail a request for the compiled path: go eager
        compiled.discard(key, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        run.compilation = compiled.lookup(key)[1]
        return None
    run.derivative_seconds = t_derivative.seconds
    blocks = [jac[i][j] for i in range(len(outputs)) for j in range(len(wrt))]
    return plan, n, m, tuple(outputs), tuple_output, blocks
