"""An SIR epidemic in age groups that mix through a contact matrix, for the CLI examples.

Input: the initial infected fraction of each of 6 age groups. Output: the infected
fraction of each group on days 10, 20, …, 80 (``[8, 6]``). Parameters: ``contacts``
(``[6, 6]``: daily infectious contacts a person of group i has with group j) and
``recovery`` (``[6]``: the daily recovery rate of each group), so ``jacserve grad`` says
which contacts drive a weighted sum of the curve (hospital load, say) and ``jacserve
spectrum`` which mixes of initial infections move it most.

>>> model = GroupSIR()
>>> model(torch.full((6,), 1e-3, dtype=torch.float64)).shape
torch.Size([8, 6])
>>> [name for name, _ in model.named_parameters()]
['contacts', 'recovery']
"""

from __future__ import annotations

import torch

AGE_GROUPS = ("0-9", "10-19", "20-39", "40-59", "60-74", "75+")


def contact_matrix(groups: int = len(AGE_GROUPS)) -> torch.Tensor:
    """Contacts that fall off with the distance between age groups, most among the
    young: ``0.12 · exp(-|i - j|) · (1.5 for the two youngest groups)``."""
    index = torch.arange(groups, dtype=torch.float64)
    nearness = torch.exp(-(index[:, None] - index[None, :]).abs())
    young = torch.where(index < 2, 1.5, 1.0)
    return 0.12 * nearness * young[:, None]


class GroupSIR(torch.nn.Module):
    """dS_i/dt = -S_i Σ_j C_ij I_j, dI_i/dt = S_i Σ_j C_ij I_j - γ_i I_i (fractions of each
    group), fixed RK4 steps of one day."""

    def __init__(self, days: int = 80, report_every: int = 10) -> None:
        super().__init__()
        self.contacts = torch.nn.Parameter(contact_matrix())
        self.recovery = torch.nn.Parameter(
            torch.tensor([0.15, 0.15, 0.14, 0.13, 0.12, 0.10], dtype=torch.float64)
        )
        self.days = days
        self.report_every = report_every

    def rate(self, state: torch.Tensor) -> torch.Tensor:
        """The time derivative of ``state`` = ``[S, I]`` (``[2, groups]``)."""
        susceptible, infected = state[0], state[1]
        infections = susceptible * (self.contacts @ infected)
        return torch.stack([-infections, infections - self.recovery * infected])

    def forward(self, infected: torch.Tensor) -> torch.Tensor:
        state = torch.stack([1 - infected, infected])
        reports: list[torch.Tensor] = []
        for day in range(self.days):
            k1 = self.rate(state)
            k2 = self.rate(state + 0.5 * k1)
            k3 = self.rate(state + 0.5 * k2)
            k4 = self.rate(state + k3)
            state = state + (k1 + 2 * k2 + 2 * k3 + k4) / 6
            if (day + 1) % self.report_every == 0:
                reports.append(state[1])
        return torch.stack(reports)
