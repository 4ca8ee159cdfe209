"""Test models with hand-derived Jacobians, and helpers that save them as archives."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

FORMATS = ("torchscript", "torch_export")


def archive_of(module: nn.Module, example: Sequence[Tensor], fmt: str) -> bytes:
    """Save ``module`` as a TorchScript or torch.export archive."""
    buffer = io.BytesIO()
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(module), buffer)
    else:
        torch.export.save(torch.export.export(module, tuple(example)), buffer)
    return buffer.getvalue()


class SinExp(nn.Module):
    """f(x) = sin(x)·exp(-x), elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x) * torch.exp(-x)


class Affine(nn.Module):
    """f(x) = A x + b with A (m×n) and b as parameters."""

    def __init__(self, n: int, m: int, dtype: torch.dtype) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(n * 1000 + m)
        self.weight = nn.Parameter(torch.randn(m, n, generator=generator, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(m, generator=generator, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight @ x + self.bias


class MatrixPlusOffset(nn.Module):
    """(x, c) ↦ A x + c with a fixed matrix A (a buffer): x varied, the offset c not."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a.clone())

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.a @ x + c


class SumOfSquares(nn.Module):
    """f(X) = Σ X², a 0-d output of a matrix input."""

    def forward(self, x: Tensor) -> Tensor:
        return (x * x).sum()


class TwoInTwoOut(nn.Module):
    """(x, y) ↦ (x ⊙ y, Σx + Σy³): several inputs and a tuple output."""

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x * y, x.sum() + (y**3).sum()


class ScaledByIndex(nn.Module):
    """(x, k) ↦ x ⊙ k with an integer input k that is not differentiated."""

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        return x * k.to(x.dtype)


class MutatesInput(nn.Module):
    """Doubles its input in place, then squares it: f(x) = 4x²."""

    def forward(self, x: Tensor) -> Tensor:
        x.mul_(2.0)
        return x * x


class MLP(nn.Module):
    """A Linear-Tanh-Linear network."""

    def __init__(self, n: int, hidden: int, m: int, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(n + 7 * m)
        self.layers = nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, m)).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class PairDistance(nn.Module):
    """cdist between x (as rows) and a fixed point: an op with no forward-mode rule."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cdist(x.reshape(-1, 2), torch.ones(1, 2, dtype=x.dtype)).reshape(-1)


@dataclass(frozen=True)
class Case:
    """A model, a point, and its Jacobian blocks [output][input] derived by hand."""

    name: str
    module: nn.Module
    inputs: tuple[Tensor, ...]
    jacobian: Callable[..., list[list[Tensor]]]


def cases(dtype: torch.dtype = torch.float64) -> list[Case]:
    """The closed-form cases, at a fixed random point."""
    g = torch.Generator().manual_seed(0)
    x3 = torch.randn(3, generator=g, dtype=dtype)
    x4 = torch.randn(4, generator=g, dtype=dtype)
    y4 = torch.randn(4, generator=g, dtype=dtype)
    mat = torch.randn(2, 3, generator=g, dtype=dtype)
    affine = Affine(3, 5, dtype)
    return [
        Case(
            "sin_exp",
            SinExp(),
            (x3,),
            lambda x: [[torch.diag((torch.cos(x) - torch.sin(x)) * torch.exp(-x))]],
        ),
        Case("affine", affine, (x3,), lambda x: [[affine.weight.detach().clone()]]),
        Case("sum_of_squares", SumOfSquares(), (mat,), lambda x: [[2 * x]]),
        Case(
            "two_in_two_out",
            TwoInTwoOut(),
            (x4, y4),
            lambda x, y: [
                [torch.diag(y), torch.diag(x)],
                [torch.ones(4, dtype=dtype), 3 * y**2],
            ],
        ),
        Case(
            "scaled_by_index",
            ScaledByIndex(),
            (x3, torch.tensor([1, -2, 3])),
            lambda x, k: [[torch.diag(k.to(dtype))]],
        ),
        Case("mutates_input", MutatesInput(), (x3,), lambda x: [[torch.diag(8 * x)]]),
    ]


def central_differences(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    inputs: Sequence[Tensor],
    wrt: Sequence[int],
    eps: float = 1e-6,
) -> list[list[Tensor]]:
    """Jacobian blocks [output][input] by float64 central differences."""
    inputs = [t.detach().clone() for t in inputs]

    def outputs_at(args: list[Tensor]) -> tuple[Tensor, ...]:
        out = fn(*[a.clone() for a in args])
        return out if isinstance(out, tuple) else (out,)

    base = outputs_at(inputs)
    blocks = [
        [torch.zeros((*o.shape, *inputs[j].shape), dtype=torch.float64) for j in wrt] for o in base
    ]
    for col, j in enumerate(wrt):
        flat = inputs[j].reshape(-1)
        for k in range(flat.numel()):
            plus = [a.clone() for a in inputs]
            minus = [a.clone() for a in inputs]
            plus[j].reshape(-1)[k] += eps
            minus[j].reshape(-1)[k] -= eps
            for i, (hi, lo) in enumerate(zip(outputs_at(plus), outputs_at(minus), strict=True)):
                derivative = ((hi - lo) / (2 * eps)).to(torch.float64)
                blocks[i][col].reshape(*base[i].shape, -1)[..., k] = derivative
    return blocks


class Slow(nn.Module):
    """f(x) = 2x, after ``iterations`` interpreter loop steps (about 1 µs each)."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for _ in range(self.iterations):
            y = y * 1.0
        return 2 * y
