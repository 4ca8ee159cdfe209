"""The differentiation engine: pure torch (torch.func and autograd), no gRPC, no server state.

>>> import torch
>>> from jacserve.server import engine
>>> engine.jvp(lambda x: x * x, [torch.tensor([3.0])], [torch.tensor([1.0])]).values
(tensor([6.]),)
"""

from jacserve.server.engine.planner import ModePlan, plan_mode
from jacserve.server.engine.transforms import (
    EngineMetrics,
    EngineResult,
    jacobian,
    jvp,
    parameter_gradients,
    vjp,
)

__all__ = [
    "EngineMetrics",
    "EngineResult",
    "ModePlan",
    "jacobian",
    "jvp",
    "parameter_gradients",
    "plan_mode",
    "vjp",
]
