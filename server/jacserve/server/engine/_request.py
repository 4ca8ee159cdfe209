"""What one Jacobian call carries down its steps: its options, and the keys under which
its :class:`DerivativeCache` keeps what it measures (see NOTE: [Re-probing] in ``_costbook``).

>>> call_signature("forward", [torch.zeros(2)], [0], False)[2:]
((0,), False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from jacserve.server.engine.cache import DerivativeCache, signature_of
from jacserve.server.engine.planner import Mode, RequestedMode

__all__ = ["JacobianOptions", "call_signature", "cost_key", "program_key"]


@dataclasses.dataclass(frozen=True)
class JacobianOptions:
    """The caller's options of one :func:`jacobian` call, passed down its steps."""

    wrt: tuple[int, ...]
    mode: RequestedMode
    chunk_size: int | None
    max_memory_bytes: int | None
    max_elements: int | None
    cache: DerivativeCache | None
    memory_meter: str
    method: str
    passes: tuple[int, int] | None = None  # a window of the passes (see jacobian())
    evaluation_bytes: int = 0  # what the evaluation leaves alive, when a budget applies

    def per_point(self) -> dict[str, Any]:
        """Keyword arguments for a :func:`jacobian` call on one point of a batch."""
        # Not dataclasses.asdict: it deep-copies, and the cache holds a lock (and must be
        # the same cache, so that the points share what it learns).
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "evaluation_bytes"
        }


def call_signature(
    method: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int], batched: bool
) -> tuple[Hashable, ...]:
    return (method, signature_of(inputs), tuple(wrt), batched)


def cost_key(
    method: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int], *, batched: bool
) -> tuple[Hashable, ...]:
    """The cache key of auto mode's :class:`CostBook` for a call (see NOTE: [Re-probing]).

    >>> cost_key("forward", [torch.zeros(2)], [0], batched=False)[0]
    'costbook'
    """
    return ("costbook", *call_signature(method, inputs, wrt, batched))


def program_key(
    method: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int], mode: Mode
) -> tuple[Hashable, ...]:
    return ("jacobian", *call_signature(method, inputs, wrt, False), mode)
