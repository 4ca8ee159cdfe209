"""Batching, chunking under a memory budget, the cost model and its cache — by behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev, vmap

from jacserve.server import engine
from jacserve.server.engine._measure import LiveTensorMeter
from jacserve.server.errors import InvalidArgument, ResourceExhausted
from tests.models import MLP, PairDistance, TwoInTwoOut

F64 = torch.float64


def test_batched_jvp_equals_k_single_jvps():
    model = MLP(4, 8, 3, F64)
    x = torch.randn(4, dtype=F64)
    tangents = torch.randn(5, 4, dtype=F64)
    batched = engine.jvp(model, [x], [tangents], batched=True)
    assert batched.values[0].shape == (5, 3) and batched.metrics.batch_size == 5
    for k in range(5):
        _, expected = torch.autograd.functional.jvp(model, x, tangents[k])
        torch.testing.assert_close(batched.values[0][k], expected)
    torch.testing.assert_close(batched.outputs[0], model(x))


def test_batched_vjp_equals_k_single_vjps_on_several_outputs():
    model = TwoInTwoOut()
    x, y = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    u = (torch.randn(6, 3, dtype=F64), torch.randn(6, dtype=F64))
    batched = engine.vjp(model, [x, y], u, batched=True)
    assert [v.shape for v in batched.values] == [(6, 3), (6, 3)]
    for k in range(6):
        _, expected = torch.autograd.functional.vjp(model, (x, y), (u[0][k], u[1][k]))
        for got, ref in zip(batched.values, expected, strict=True):
            torch.testing.assert_close(got[k], ref)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_batched_jacobian_equals_vmap_of_jacrev(mode):
    model = MLP(3, 6, 2, F64)
    points = torch.randn(7, 3, dtype=F64)
    result = engine.jacobian(model, [points], batched=True, mode=mode)
    assert result.values[0].shape == (7, 2, 3) and result.outputs[0].shape == (7, 2)
    torch.testing.assert_close(result.values[0], vmap(jacrev(model))(points))
    assert (
        result.metrics.batch_size == 7
        and result.metrics.passes == {"forward": 3, "reverse": 2}[mode]
    )


def test_batched_jacobian_with_several_inputs_and_outputs():
    model = TwoInTwoOut()
    xs, ys = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    result = engine.jacobian(model, [xs, ys], batched=True)
    for b in range(4):
        expected = torch.autograd.functional.jacobian(model, (xs[b], ys[b]))
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(result.values[i * 2 + j][b], expected[i][j])


def test_batched_jacobian_falls_back_to_points_when_the_model_cannot_be_vmapped():
    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item())  # .item() cannot run under vmap

    points = torch.randn(3, 2, dtype=F64)
    result = engine.jacobian(data_dependent, [points], batched=True)
    for b in range(3):
        expected = torch.autograd.functional.jacobian(data_dependent, points[b])
        torch.testing.assert_close(result.values[0][b], expected)
    assert (
        not result.metrics.vectorized and "each point separately" in result.metrics.fallback_reason
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: engine.jvp(torch.sin, [torch.zeros(())], [torch.zeros(())], batched=True),
            "batched tangents",
        ),
        (
            lambda: engine.jacobian(torch.sin, [torch.zeros(())], batched=True),
            "batched inputs need",
        ),
        (
            lambda: engine.jacobian(
                torch.add, [torch.zeros(2, 3), torch.zeros(3, 3)], batched=True
            ),
            "one shared leading dimension",
        ),
        (
            lambda: engine.jacobian(torch.sin, [torch.zeros(2)], max_memory_bytes=0),
            "max_memory_bytes must be >= 1",
        ),
    ],
)
def test_bad_batches_and_budgets_are_invalid_arguments(call, message):
    with pytest.raises(InvalidArgument, match=message):
        call()


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_chunked_passes_give_the_same_jacobian(mode):
    model = MLP(10, 16, 9, F64)
    x = torch.randn(10, dtype=F64)
    whole = engine.jacobian(model, [x], mode=mode)
    chunked = engine.jacobian(model, [x], mode=mode, chunk_size=4)
    torch.testing.assert_close(chunked.values[0], whole.values[0])
    passes = {"forward": 10, "reverse": 9}[mode]
    assert (chunked.metrics.chunks, chunked.metrics.chunk_size) == (math.ceil(passes / 4), 4)
    assert whole.metrics.chunks == 1


class _ElementwiseChain(torch.nn.Module):
    """64 → 2000 with a long elementwise tail: each reverse pass needs far more memory
    (temporaries of the tail) than the result row it makes, as in a simulator."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lift = torch.nn.Linear(64, 2000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lift(x)
        for _ in range(8):
            y = torch.tanh(y) * torch.sin(y) + y
        return y


def _wide() -> tuple[torch.nn.Module, torch.Tensor]:
    return _ElementwiseChain(), torch.randn(64)


def test_a_memory_budget_chunks_the_passes_and_the_peak_stays_under_it():
    model, x = _wide()
    with LiveTensorMeter() as unchunked_meter:
        unchunked = engine.jacobian(model, [x], mode="reverse")
    budget = unchunked_meter.peak_bytes // 4
    cache = engine.DerivativeCache()
    engine.jacobian(model, [x], mode="reverse", max_memory_bytes=budget, cache=cache)  # probes
    with LiveTensorMeter() as meter:
        chunked = engine.jacobian(model, [x], mode="reverse", max_memory_bytes=budget, cache=cache)
    torch.testing.assert_close(chunked.values[0], unchunked.values[0])
    assert chunked.metrics.chunks > 1 and chunked.metrics.memory_budget_bytes == budget
    assert meter.peak_bytes <= budget, (meter.peak_bytes, budget)
    assert 0 < chunked.metrics.estimated_peak_bytes <= budget


def test_a_budget_below_one_pass_is_resource_exhausted_with_the_figure():
    model, x = _wide()
    with pytest.raises(
        ResourceExhausted, match=r"needs at least \d+ bytes in reverse mode"
    ) as info:
        engine.jacobian(model, [x], mode="reverse", max_memory_bytes=10_000)
    assert "max_memory_bytes" in str(info.value)


def test_auto_mode_never_picks_a_mode_without_a_forward_rule():
    model = PairDistance()  # cdist: no forward-mode rule
    cache = engine.DerivativeCache()
    x = torch.randn(2, dtype=F64)  # n=2 inputs, m=1 output
    result = engine.jacobian(model, [x], cache=cache)
    assert result.metrics.mode == "reverse"
    torch.testing.assert_close(result.values[0], torch.autograd.functional.jacobian(model, x))


def test_a_failed_vectorization_check_is_remembered():
    model = PairDistance()
    x = torch.randn(8, dtype=F64)
    cache = engine.DerivativeCache()
    first = engine.jacobian(model, [x], mode="reverse", cache=cache)
    second = engine.jacobian(model, [x], mode="reverse", cache=cache)
    expected = torch.autograd.functional.jacobian(model, x)
    torch.testing.assert_close(first.values[0], expected)
    torch.testing.assert_close(second.values[0], expected)
    assert "disagreed with an unbatched check pass" in first.metrics.fallback_reason
    assert "earlier request found vmap unusable" in second.metrics.fallback_reason


def test_derivative_cache_is_bounded_in_bytes():
    cache = engine.DerivativeCache(max_bytes=4 * 512)
    for k in range(10):
        cache.put(("key", k), k)
    assert cache.nbytes == 4 * 512
    assert cache.get(("key", 0)) is None and cache.get(("key", 9)) == 9


def test_both_cpu_memory_meters_read_a_known_allocation_in_a_fresh_process():
    # Validates the tensor meter against the process's RSS, where nothing is reused.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from jacserve.server.engine._measure import LiveTensorMeter, measure_peak_memory\n"
        "with LiveTensorMeter():\n"
        "    torch.ones(1)  # first use imports torch's dispatch machinery\n"
        "for meter in ('rss', 'tensors'):\n"
        "    with measure_peak_memory(torch.device('cpu'), meter) as peak:\n"
        "        block = torch.ones(16 << 20)\n"
        "        del block\n"
        "    print(peak.method, peak.bytes)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    readings = dict(line.split() for line in out.stdout.splitlines())
    size = 64 << 20
    assert int(readings["cpu_live_tensor_peak"]) == size
    assert abs(int(readings["cpu_rss_high_water"]) - size) < 0.05 * size, readings


def test_the_tensor_meter_reports_per_request_peaks():
    model, x = _wide()
    rss = engine.jacobian(model, [x], mode="reverse")
    exact = engine.jacobian(model, [x], mode="reverse", memory_meter="tensors")
    assert rss.metrics.memory_method in ("cpu_rss_high_water", "unavailable")
    assert exact.metrics.memory_method == "cpu_live_tensor_peak"
    assert exact.metrics.peak_memory_bytes > 2000 * 64 * 4  # at least the Jacobian itself
