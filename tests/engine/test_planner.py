"""Auto mode's planner, by behaviour: the prior, the noise margin, re-probing, bounded probes.

Costs are put into a model's :class:`CostBook` where a test needs them to be known, so that
no test depends on how fast this machine is; real runs only add measurements.
"""

from __future__ import annotations

import pytest
import torch

from jacserve.server import engine
from jacserve.server.engine._costbook import FIRST_USE_BUDGET, CostBook
from jacserve.server.engine.jacobian import cost_key
from jacserve.server.engine.planner import MIN_MARGIN, Estimate, plan_mode, prior_mode
from tests.models import MLP

F64 = torch.float64


def _book(cache: engine.DerivativeCache, x: torch.Tensor) -> CostBook:
    key = cost_key("forward", [x], (0,), batched=False)
    book = cache.get(key)
    if book is None:
        book = CostBook()
        cache.put(key, book)
    return book


@pytest.mark.parametrize(
    ("n", "m", "expected"),
    [
        (3, 3000, "forward"),  # many times fewer forward passes
        (3000, 3, "reverse"),
        (100, 1000, "forward"),
        (1000, 3000, "forward"),  # a large Jacobian: fewer passes
        (1000, 1000, "reverse"),  # a tie: reverse reuses the tape
        (3, 8, "reverse"),  # the SIR model: few passes, the fixed cost decides
        (16, 16, "reverse"),
    ],
)
def test_the_prior_follows_pass_counts_and_small_jacobians_go_reverse(n, m, expected):
    assert prior_mode(n, m)[0] == expected
    assert plan_mode(n, m).mode == expected


@pytest.mark.parametrize("ratio", [0.9, 1.0 / (1 + MIN_MARGIN) + 0.01])
def test_within_the_noise_margin_the_pass_counts_decide(ratio):
    # Reverse looks a little faster, but needs 100x the passes: not enough to overrule.
    forward = Estimate(0.010, 0.010, "3 runs")
    reverse = Estimate(0.010 * ratio, 0.010 * ratio, "3 runs")
    plan = plan_mode(3, 300, estimates=(forward, reverse))
    assert plan.mode == "forward"
    assert "within the 25% noise margin" in plan.reason
    assert plan.estimated_reverse_seconds == pytest.approx(0.010 * ratio)


def test_beyond_the_margin_measurements_overrule_the_prior():
    plan = plan_mode(
        3, 300, estimates=(Estimate(0.010, 0.010, "runs"), Estimate(0.002, 0.002, "runs"))
    )
    assert plan.mode == "reverse" and "measured faster" in plan.reason
    assert "forward 10 ms" in plan.reason and "reverse 2 ms" in plan.reason


def test_an_extrapolated_probe_must_win_by_its_pessimistic_bound():
    # A probe of 2 passes in 1 ms: 300 passes are at most 150 ms, far above forward's 10.
    probe = CostBook()
    probe.record_probe("reverse", 2, 0.001)
    reverse = probe.estimate("reverse", 300)
    assert reverse is not None and reverse.pessimistic == pytest.approx(0.150)
    assert plan_mode(3, 300, estimates=(Estimate(0.010, 0.010, "runs"), reverse)).mode == "forward"


def test_the_margin_widens_to_the_spread_the_machine_shows():
    book = CostBook()
    for seconds in (0.010, 0.010, 0.030):
        book.record_run("forward", seconds, checked=False, passes=3)
    assert book.margin() == 1.0  # a spread of 200%, capped at 100%
    book.record_run("reverse", 0.006, checked=False, passes=300)  # faster, but within it
    quiet = plan_mode(
        3, 300, estimates=(book.estimate("forward", 3), book.estimate("reverse", 300))
    )
    assert quiet.mode == "reverse"  # on a quiet machine (25%) this would have switched
    plan = plan_mode(
        3,
        300,
        estimates=(book.estimate("forward", 3), book.estimate("reverse", 300)),
        margin=book.margin(),
    )
    assert plan.mode == "forward"


def test_with_an_engine_cache_the_choice_uses_the_book():
    model, x = MLP(3, 8, 300, F64), torch.randn(3, dtype=F64)
    cache = engine.DerivativeCache()
    book = _book(cache, x)
    for _ in range(3):
        book.record_run("forward", 10.0, checked=False, passes=3)  # "10 s": far slower
        book.record_run("reverse", 1e-6, checked=False, passes=300)
    result = engine.jacobian(model, [x], cache=cache)
    assert result.metrics.mode == "reverse" and "measured faster" in result.metrics.mode_reason
    torch.testing.assert_close(result.values[0], torch.autograd.functional.jacobian(model, x))


def test_a_full_run_that_contradicts_its_probe_estimate_makes_a_re_probe():
    model, x = MLP(300, 8, 3, F64), torch.randn(300, dtype=F64)  # prior: reverse (3 passes)
    cache = engine.DerivativeCache()
    book = _book(cache, x)
    for _ in range(3):
        book.record_run("reverse", 10.0, checked=False, passes=3)
    book.record_probe("forward", 300, 1e-9)  # a probe "of all 300 passes in 1 ns"
    book.settled.add("reverse")
    first = engine.jacobian(model, [x], cache=cache)
    assert first.metrics.mode == "forward"  # the estimate said so, far beyond the margin
    # ... and the real run took far longer than 1 ns: the probes are dropped and redone.
    assert book.reprobes == 1 and "contradicted the forward estimate" in first.metrics.mode_reason
    assert book.probes["forward"] == {} and "reverse" not in book.settled
    second = engine.jacobian(model, [x], cache=cache)
    estimate = book.estimate("forward", 300)
    assert estimate is not None and "forward run" in estimate.basis  # measured, not probed
    assert second.metrics.estimated_forward_seconds == first.metrics.derivative_seconds
    torch.testing.assert_close(second.values[0], torch.autograd.functional.jacobian(model, x))


@pytest.mark.parametrize(("n", "m"), [(3, 8), (3, 400), (400, 3), (64, 64), (40, 200)])
def test_planning_work_on_first_use_is_at_most_one_probe_of_one_pass(n, m):
    model, x = MLP(n, 16, m, F64), torch.randn(n, dtype=F64)
    cache = engine.DerivativeCache()
    first = engine.jacobian(model, [x], cache=cache)
    book = _book(cache, x)
    assert book.probe_calls <= 1 and book.probe_passes <= 1
    assert first.metrics.mode == prior_mode(n, m)[0]  # nothing measured before it ran
    assert first.metrics.passes == min(n, m) or prior_mode(n, m)[0] == "reverse"
    assert "first use" in first.metrics.mode_reason
    calls = 6
    for _ in range(calls - 1):
        engine.jacobian(model, [x], cache=cache)
    # later: at most one probe call a request, each at most double the last
    assert book.probe_calls <= calls and book.probe_passes < 2**book.probe_calls
    assert FIRST_USE_BUDGET <= 0.2


def test_forced_modes_are_recorded_and_never_probed():
    model, x = MLP(3, 8, 30, F64), torch.randn(3, dtype=F64)
    cache = engine.DerivativeCache()
    for mode in ("forward", "reverse", "forward", "reverse"):
        engine.jacobian(model, [x], mode=mode, cache=cache)
    book = _book(cache, x)
    assert book.probe_calls == 0
    assert len(book.runs["forward"]) == 1 and len(book.runs["reverse"]) == 1  # + first runs
    result = engine.jacobian(model, [x], cache=cache)
    assert result.metrics.estimated_forward_seconds > 0
    assert result.metrics.estimated_reverse_seconds > 0


class _Distances(torch.nn.Module):
    """2 inputs → 16 distances by cdist, which has no forward-mode rule: the prior is forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        points = torch.arange(32, dtype=x.dtype).reshape(16, 2)
        return torch.cdist(x.reshape(1, 2), points).reshape(-1)


def test_a_mode_without_a_forward_rule_is_marked_unavailable():
    model, x = _Distances(), torch.randn(2, dtype=F64)
    cache = engine.DerivativeCache()
    first = engine.jacobian(model, [x], cache=cache)
    assert (
        first.metrics.mode == "reverse" and "no forward-mode rule" in first.metrics.fallback_reason
    )
    assert "forward" in _book(cache, x).unavailable
    again = engine.jacobian(model, [x], cache=cache)
    assert again.metrics.mode == "reverse" and "forward" not in again.metrics.fallback_reason
    assert "forward unavailable" in again.metrics.mode_reason
    assert again.metrics.estimated_forward_seconds == 0.0  # reported as unmeasured, not inf
    torch.testing.assert_close(again.values[0], torch.autograd.functional.jacobian(model, x))


def test_later_probes_are_amortized_over_the_runs_they_serve():
    book = CostBook()
    book.record_run("forward", 0.010, checked=True, passes=3)  # the first request
    for _ in range(3):
        book.record_run("forward", 0.010, checked=False, passes=3)
    # one evaluation of 1 ms predicts a one-pass reverse probe of 3 ms: 5% of 30 ms of
    # later runs is too little...
    assert book.next_probe("reverse", 300, spent_seconds=0.010, evaluation_seconds=0.001) == 0
    for _ in range(80):
        book.record_run("forward", 0.010, checked=False, passes=3)
    # ... 5% of 830 ms is enough, once
    assert book.next_probe("reverse", 300, spent_seconds=0.010, evaluation_seconds=0.001) == 1
    book.record_probe("reverse", 1, 0.040)
    assert book.probe_seconds == 0.040
    assert book.next_probe("reverse", 300, spent_seconds=0.010, evaluation_seconds=0.001) == 0
