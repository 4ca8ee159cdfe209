"""The differentiation engine: pure torch (torch.func and autograd), no gRPC, no server state.

Callers that want measurements reused across calls pass a :class:`DerivativeCache`.

>>> import torch
>>> from jacserve.server import engine
>>> engine.jvp(lambda x: x * x, [torch.tensor([3.0])], [torch.tensor([1.0])]).values
(tensor([6.]),)
"""

from jacserve.server.engine._run import EngineMetrics, EngineResult
from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.gradients import parameter_gradients
from jacserve.server.engine.jacobian import jacobian
from jacserve.server.engine.planner import ModePlan, plan_mode
from jacserve.server.engine.products import jvp, vjp
from jacserve.server.engine.second_order import (
    gauss_newton_vector_products,
    hessian,
    hessian_vector_products,
)

__all__ = [
    "DerivativeCache",
    "EngineMetrics",
    "EngineResult",
    "ModePlan",
    "gauss_newton_vector_products",
    "hessian",
    "hessian_vector_products",
    "jacobian",
    "jvp",
    "parameter_gradients",
    "plan_mode",
    "vjp",
]
