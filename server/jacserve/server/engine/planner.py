"""Choosing forward or reverse mode for a full Jacobian.

A Jacobian of ``f: R^n → R^m`` costs ``n`` forward-mode (JVP) passes or ``m``
reverse-mode (VJP) passes. A reverse pass also records the activations it needs, so at
equal pass counts forward mode is preferred only when it is strictly cheaper.

>>> plan_mode(10, 1000)
ModePlan(mode='forward', passes=10, reason='auto: n=10 input elements < m=1000 output elements, so forward mode needs fewer passes')
>>> plan_mode(1000, 10).mode
'reverse'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Mode", "ModePlan", "RequestedMode", "plan_mode"]

Mode = Literal["forward", "reverse"]
RequestedMode = Literal["auto", "forward", "reverse"]


@dataclass(frozen=True)
class ModePlan:
    """The mode to run, how many passes it takes, and why it was chosen."""

    mode: Mode
    passes: int
    reason: str


def plan_mode(n: int, m: int, requested: RequestedMode = "auto") -> ModePlan:
    """Plan a Jacobian of ``n`` differentiated input elements and ``m`` output elements.

    Args:
        n: total number of elements of the differentiated inputs.
        m: total number of elements of the outputs.
        requested: ``"forward"`` or ``"reverse"`` force a mode; ``"auto"`` picks the one
            with fewer passes (reverse on a tie).

    Returns:
        The chosen :class:`ModePlan`.

    Raises:
        ValueError: for negative sizes or an unknown ``requested`` mode.

    >>> plan_mode(5, 5, "forward").reason
    'forward mode requested'
    """
    if n < 0 or m < 0:
        raise ValueError(f"plan_mode: sizes must be >= 0; got n={n}, m={m}")
    if requested == "forward":
        return ModePlan("forward", n, "forward mode requested")
    if requested == "reverse":
        return ModePlan("reverse", m, "reverse mode requested")
    if requested != "auto":
        raise ValueError(
            f"plan_mode: expected mode 'auto', 'forward' or 'reverse'; got {requested!r}"
        )
    if n < m:
        return ModePlan(
            "forward",
            n,
            f"auto: n={n} input elements < m={m} output elements, "
            "so forward mode needs fewer passes",
        )
    return ModePlan(
        "reverse",
        m,
        f"auto: m={m} output elements <= n={n} input elements, "
        "so reverse mode needs no more passes",
    )
