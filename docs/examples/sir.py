"""An SIR epidemic model integrated with fixed RK4 steps, for the docs and guides.

Inputs: ``params = [beta, gamma, initial infected fraction]``. Output: the infected
fraction on days 10, 20, …, 80 (8 numbers), so its Jacobian says how each parameter moves
the epidemic curve.

>>> model = SIR()
>>> model(torch.tensor([0.3, 0.1, 0.01], dtype=torch.float64)).shape
torch.Size([8])
"""

from __future__ import annotations

import torch


class SIR(torch.nn.Module):
    """dS/dt = -βSI, dI/dt = βSI - γI (fractions of the population), RK4 with ``1 /
    steps_per_day`` day steps (one a day agrees with four to 4 digits here)."""

    def __init__(self, days: int = 80, steps_per_day: int = 1, report_every: int = 10) -> None:
        super().__init__()
        self.days = days
        self.steps_per_day = steps_per_day
        self.report_every = report_every

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        beta, gamma, infected = params[0], params[1], params[2]
        state = torch.stack([1 - infected, infected])
        h = 1.0 / self.steps_per_day
        reports: list[torch.Tensor] = []
        for step in range(self.days * self.steps_per_day):
            k1 = _rate(state, beta, gamma)
            k2 = _rate(state + 0.5 * h * k1, beta, gamma)
            k3 = _rate(state + 0.5 * h * k2, beta, gamma)
            k4 = _rate(state + h * k3, beta, gamma)
            state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            if (step + 1) % (self.report_every * self.steps_per_day) == 0:
                reports.append(state[1])
        return torch.stack(reports)


def _rate(state: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    s, i = state[0], state[1]
    return torch.stack([-beta * s * i, beta * s * i - gamma * i])
