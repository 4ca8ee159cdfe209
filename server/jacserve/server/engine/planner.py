"""Choosing forward or reverse mode for a full Jacobian.

NOTE: [Planning auto mode]
A Jacobian of ``f: R^n → R^m`` costs ``n`` forward-mode (JVP) passes or ``m`` reverse-mode
(VJP) passes, run as one vectorized call: about ``fixed + per_pass × passes`` seconds, and
both parts differ between the modes. Measured on CPU (torch 2.13), a one-pass call costs
3–8 evaluations in forward mode (the model runs again on dual numbers) and 1–2.5 in
reverse (it replays the tape the evaluation recorded), while per-pass costs range from
negligible (small models: per-op overhead is everything) to most of the time (large
elementwise tails). So:

* **The prior** decides without measurements: the mode with fewer passes when one needs at
  least ``MANY_TIMES`` (4×) fewer, or when the Jacobian is large; reverse when both need
  at most ``FEW_PASSES`` passes and neither needs many times fewer (there the fixed cost
  decides, and reverse's is smaller: the README's SIR model, 3 → 8, takes 62 ms in
  reverse and 247 ms in forward); reverse on a tie.
* **Measurements overrule the prior only beyond the noise.** Each mode's estimate comes
  from its own full runs (their median) or from probes of it (see ``_costbook``), with
  a pessimistic bound where a probe is extrapolated. Auto leaves the prior only when the
  other mode's pessimistic estimate, raised by the noise margin, is still below the
  prior's estimate; the margin is at least ``MIN_MARGIN`` and widens to the spread the
  machine has shown between runs of the same mode. Within the margin pass counts decide.

Planning on first use is bounded by the run it plans: probes of the other mode are made
after the real passes and only when predicted to cost at most a fifth of them (a
twentieth on later calls), so most models are never probed at all. See ``_costbook``
for the record and NOTE: [Re-probing] there.

>>> plan_mode(10, 1000).mode
'forward'
>>> plan_mode(3, 8).mode  # few passes either way: reverse's smaller fixed cost decides
'reverse'
>>> fast = Estimate(0.010, 0.010, "2 runs")
>>> slow = Estimate(0.011, 0.011, "2 runs")
>>> plan_mode(10, 1000, estimates=(slow, fast)).mode  # within the margin: pass counts
'forward'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FEW_PASSES",
    "MANY_TIMES",
    "MIN_MARGIN",
    "Estimate",
    "Mode",
    "ModePlan",
    "RequestedMode",
    "plan_mode",
    "prior_mode",
]

Mode = Literal["forward", "reverse"]
RequestedMode = Literal["auto", "forward", "reverse"]

MANY_TIMES = 4
"""A pass-count ratio from which the mode with fewer passes is the prior."""
FEW_PASSES = 16
"""Up to this many passes a vectorized call costs about what a one-pass call does."""
MIN_MARGIN = 0.25
"""The smallest relative margin a measured difference must exceed to overrule the prior."""


@dataclass(frozen=True)
class Estimate:
    """Seconds a mode's full Jacobian is estimated to take.

    ``pessimistic`` bounds it from above where it is extrapolated from probes (equal to
    ``seconds`` when measured on full runs); ``basis`` says where it comes from.
    """

    seconds: float
    pessimistic: float
    basis: str


@dataclass(frozen=True)
class ModePlan:
    """The mode to run, how many passes it takes, why, and the estimates (s) if measured."""

    mode: Mode
    passes: int
    reason: str
    estimated_forward_seconds: float = 0.0
    estimated_reverse_seconds: float = 0.0


def prior_mode(n: int, m: int) -> tuple[Mode, str]:
    """The mode auto chooses without measurements, and why. See NOTE: [Planning auto mode].

    >>> prior_mode(3, 3000)
    ('forward', 'n=3 forward passes, many times fewer than m=3000 reverse passes')
    >>> prior_mode(1000, 1000)[0], prior_mode(3, 8)[0], prior_mode(1000, 3000)[0]
    ('reverse', 'reverse', 'forward')
    """
    if n * MANY_TIMES <= m:
        return "forward", f"n={n} forward passes, many times fewer than m={m} reverse passes"
    if m * MANY_TIMES <= n:
        return "reverse", f"m={m} reverse passes, many times fewer than n={n} forward passes"
    if max(n, m) <= FEW_PASSES:
        return "reverse", (
            f"n={n} and m={m} passes are few either way, so the fixed cost decides and reverse "
            "mode's is smaller (it reuses the evaluation's tape)"
        )
    if n < m:
        return "forward", f"n={n} forward passes < m={m} reverse passes"
    return "reverse", f"m={m} reverse passes <= n={n} forward passes"


def _ms(estimate: Estimate | None) -> str:
    if estimate is None:
        return "not measured"
    if not math.isfinite(estimate.seconds):
        return f"unavailable ({estimate.basis})"
    text = f"{estimate.seconds * 1e3:.3g} ms"
    if estimate.pessimistic > estimate.seconds * 1.001:
        text += f" (at most {estimate.pessimistic * 1e3:.3g} ms)"
    return f"{text} from {estimate.basis}"


def plan_mode(
    n: int,
    m: int,
    requested: RequestedMode = "auto",
    *,
    estimates: tuple[Estimate | None, Estimate | None] | None = None,
    margin: float = MIN_MARGIN,
) -> ModePlan:
    """Plan a Jacobian of ``n`` differentiated input elements and ``m`` output elements.

    Args:
        n: total number of elements of the differentiated inputs (per point).
        m: total number of elements of the outputs (per point).
        requested: ``"forward"`` or ``"reverse"`` force a mode; ``"auto"`` chooses.
        estimates: measured (forward, reverse) estimates, either ``None`` if unmeasured.
        margin: the relative noise a measured difference must exceed (see the NOTE).

    Returns:
        The chosen :class:`ModePlan`; its ``reason`` names both estimates and what decided.

    Raises:
        ValueError: for negative sizes or an unknown ``requested`` mode.

    >>> plan_mode(5, 5, "forward").reason
    'forward mode requested'
    >>> plan = plan_mode(10, 100, estimates=(Estimate(0.04, 0.04, "3 runs"), Estimate(0.011, 0.02, "probes")))
    >>> plan.mode, plan.passes
    ('reverse', 100)
    """
    if n < 0 or m < 0:
        raise ValueError(f"plan_mode: sizes must be >= 0; got n={n}, m={m}")
    forward, reverse = estimates or (None, None)
    forward_s = forward.seconds if forward and math.isfinite(forward.seconds) else 0.0
    reverse_s = reverse.seconds if reverse and math.isfinite(reverse.seconds) else 0.0
    if requested in ("forward", "reverse"):
        passes = n if requested == "forward" else m
        return ModePlan(requested, passes, f"{requested} mode requested", forward_s, reverse_s)
    if requested != "auto":
        raise ValueError(
            f"plan_mode: expected mode 'auto', 'forward' or 'reverse'; got {requested!r}"
        )
    prior, why = prior_mode(n, m)
    other: Mode = "reverse" if prior == "forward" else "forward"
    by_mode = {"forward": forward, "reverse": reverse}
    mine, theirs = by_mode[prior], by_mode[other]
    passes = {"forward": n, "reverse": m}
    compared = f"estimated forward {_ms(forward)}, reverse {_ms(reverse)}"
    if mine is not None and theirs is not None:
        if theirs.pessimistic * (1 + margin) < mine.seconds:
            return ModePlan(
                other,
                passes[other],
                f"auto: {other} (measured faster by more than the {margin:.0%} noise margin, "
                f"though the prior was {prior}: {why}); {compared}",
                forward_s,
                reverse_s,
            )
        verdict = f"measured difference within the {margin:.0%} noise margin or favouring {prior}"
    elif mine is None and theirs is None:
        verdict = "no measurements yet"
    else:
        verdict = f"{other} mode not measured" if theirs is None else f"{prior} mode not measured"
    return ModePlan(
        prior,
        passes[prior],
        f"auto: {prior} ({why}; {verdict}); {compared}",
        forward_s,
        reverse_s,
    )
