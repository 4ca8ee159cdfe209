"""Choosing forward or reverse mode for a full Jacobian.

A Jacobian of ``f: R^n → R^m`` costs ``n`` forward-mode (JVP) passes or ``m``
reverse-mode (VJP) passes, but a pass of each mode costs a different amount for each
program. With measured costs (see NOTE: [Cost model] in ``_profile``) auto mode picks
the smaller estimate; without them it picks the mode with fewer passes (reverse on a
tie, since it records the tape once for all passes).

>>> plan_mode(10, 1000).mode
'forward'
>>> from jacserve.server.engine._profile import ModeCost
>>> costs = (ModeCost(0.0, 0.004), ModeCost(0.001, 0.0001))  # forward, reverse
>>> plan = plan_mode(10, 100, costs=costs)
>>> plan.mode, plan.passes
('reverse', 100)
>>> plan.reason
'auto: estimated reverse 11.0 ms (m=100 passes) < forward 40.0 ms (n=10 passes), from timings of this model at this input signature'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jacserve.server.engine._profile import ModeCost

__all__ = ["Mode", "ModePlan", "RequestedMode", "plan_mode"]

Mode = Literal["forward", "reverse"]
RequestedMode = Literal["auto", "forward", "reverse"]


@dataclass(frozen=True)
class ModePlan:
    """The mode to run, how many passes it takes, why, and the estimates (s) if measured."""

    mode: Mode
    passes: int
    reason: str
    estimated_forward_seconds: float = 0.0
    estimated_reverse_seconds: float = 0.0


def plan_mode(
    n: int,
    m: int,
    requested: RequestedMode = "auto",
    *,
    costs: tuple[ModeCost, ModeCost] | None = None,
) -> ModePlan:
    """Plan a Jacobian of ``n`` differentiated input elements and ``m`` output elements.

    Args:
        n: total number of elements of the differentiated inputs (per point).
        m: total number of elements of the outputs (per point).
        requested: ``"forward"`` or ``"reverse"`` force a mode; ``"auto"`` chooses.
        costs: measured (forward, reverse) costs; without them auto compares n and m.

    Returns:
        The chosen :class:`ModePlan`.

    Raises:
        ValueError: for negative sizes or an unknown ``requested`` mode.

    >>> plan_mode(5, 5, "forward").reason
    'forward mode requested'
    """
    if n < 0 or m < 0:
        raise ValueError(f"plan_mode: sizes must be >= 0; got n={n}, m={m}")
    forward_s = costs[0].estimate(n) if costs else 0.0
    reverse_s = costs[1].estimate(m) if costs else 0.0
    if requested == "forward":
        return ModePlan("forward", n, "forward mode requested", forward_s, reverse_s)
    if requested == "reverse":
        return ModePlan("reverse", m, "reverse mode requested", forward_s, reverse_s)
    if requested != "auto":
        raise ValueError(
            f"plan_mode: expected mode 'auto', 'forward' or 'reverse'; got {requested!r}"
        )
    if costs is not None:
        forward_text = f"forward {forward_s * 1e3:.1f} ms (n={n} passes)"
        reverse_text = f"reverse {reverse_s * 1e3:.1f} ms (m={m} passes)"
        if forward_s < reverse_s:
            return ModePlan(
                "forward",
                n,
                f"auto: estimated {forward_text} < {reverse_text}, from timings of this model at this input signature",
                forward_s,
                reverse_s,
            )
        return ModePlan(
            "reverse",
            m,
            f"auto: estimated {reverse_text} < {forward_text}, from timings of this model at this input signature",
            forward_s,
            reverse_s,
        )
    if n < m:
        return ModePlan(
            "forward",
            n,
            f"auto: n={n} input elements < m={m} output elements, so forward mode needs fewer passes",
        )
    return ModePlan(
        "reverse",
        m,
        f"auto: m={m} output elements <= n={n} input elements, so reverse mode needs no more passes",
    )
