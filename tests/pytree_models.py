"""Models with nested inputs and outputs (Hugging Face-style dicts), their archives in
every format, and helpers that compare nested results with torch.func's."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor, nn

from jacserve.pytree import flatten

F64 = torch.float64
FORMATS = ("scripted", "traced", "torch_export")


class DictOutput(nn.Module):
    """An HF-style head: ``{"logits": ..., "hidden": ...}`` of two inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3, 4).double()
        self.head = nn.Linear(4, 2).double()

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        hidden = torch.tanh(self.proj(x)) * y
        return {"logits": self.head(hidden), "hidden": hidden}


class NestedOutput(nn.Module):
    """``({"hidden": ..., "logits": ...}, [a scalar, a vector])``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(3, 2).double()

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        h = torch.sin(self.proj(x))
        return {"hidden": h, "logits": h * x.sum()}, [(h * h).sum(), x.exp()]


class DictInput(nn.Module):
    """A dict argument and a 0-d one, a dict output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.proj = nn.Linear(3, 2).double()

    def forward(self, batch: dict[str, Tensor], scale: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.proj(batch["x"]) + batch["bias"]) * scale
        return {"out": h, "norm": (h * h).sum()}


class DictLoss(nn.Module):
    """A scalar loss in a dict, for second order: ``{"loss": f(x, batch)}``."""

    def forward(self, x: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": (torch.sin(x) * batch["w"]).sum() + (x * x).sum() * batch["c"]}


def archive(module: nn.Module, example: tuple[Any, ...], fmt: str) -> bytes:
    """``module`` saved as a scripted or traced TorchScript archive or a .pt2."""
    buffer = io.BytesIO()
    if fmt == "scripted":
        torch.jit.save(torch.jit.script(module), buffer)
    elif fmt == "traced":  # dict outputs trace only with strict=False
        torch.jit.save(torch.jit.trace(module, example, strict=False), buffer)
    else:
        torch.export.save(torch.export.export(module, example), buffer)
    return buffer.getvalue()


def assert_tree_close(got: Any, want: Any, *, atol: float = 1e-10, rtol: float = 1e-10) -> None:
    """Same structure (tuple/list/dict kinds, dict keys in any order) and every value
    within tolerance."""
    assert _kinds(got) == _kinds(want), (_kinds(got), _kinds(want))
    want_leaves, want_tree = flatten(want, what="want")
    for a, b in zip(flatten(got, what="got", like=want_tree)[0], want_leaves, strict=True):
        assert a.shape == b.shape, (a.shape, b.shape)
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def _kinds(value: Any) -> Any:
    """The structure with dicts as sorted key→kind maps (order-free), tensors as ``*``."""
    if isinstance(value, dict):
        return {k: _kinds(v) for k, v in sorted(value.items())}
    if isinstance(value, tuple | list):
        return (type(value).__name__, [_kinds(v) for v in value])
    return "*"
