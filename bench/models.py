"""Models the benchmarks share (bench/ is on sys.path when a benchmark runs as a script)."""

from __future__ import annotations

import torch

__all__ = ["Mlp"]


class Mlp(torch.nn.Module):
    """n → ``hidden`` (tanh) → m."""

    def __init__(self, n: int, m: int, hidden: int = 64) -> None:
        super().__init__()
        torch.manual_seed(n * 7919 + m)
        self.hidden = torch.nn.Linear(n, hidden)
        self.out = torch.nn.Linear(hidden, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))
