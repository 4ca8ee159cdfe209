"""The propagation engine without a server: both strategies against J Σ Jᵀ from
``torch.func.jacrev``, batches of matrix-free passes, Σ's checks and tolerances."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from jacserve.server.engine.propagation import factor_covariance, propagate_uncertainty
from jacserve.server.errors import InvalidArgument, ResourceExhausted

F64 = torch.float64


def _model(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w @ torch.sin(x)) * x.sum()


@pytest.mark.parametrize("strategy", ["auto", "jacobian", "matrix-free"])
@pytest.mark.parametrize("rank", [2, 6])
def test_every_strategy_gives_j_sigma_jt(strategy, rank):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, generator=g, dtype=F64), torch.randn(4, 6, generator=g, dtype=F64)
    b = torch.randn(6, rank, generator=g, dtype=F64)
    sigma = b @ b.T
    found = propagate_uncertainty(_model, [x, w], sigma, wrt=[0], strategy=strategy)
    j = jacrev(_model)(x, w)
    torch.testing.assert_close(found.covariance, j @ sigma @ j.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(found.result.outputs[0], _model(x, w))
    assert found.rank == rank
    want = "matrix-free" if rank < 4 else "jacobian"
    assert found.method == (want if strategy == "auto" else strategy)
    passes = found.result.metrics.passes
    assert passes == (rank if found.method == "matrix-free" else 4)


def test_a_memory_budget_splits_the_matrix_free_passes_into_batches():
    x = torch.linspace(-1, 1, 50, dtype=F64)
    sigma = torch.eye(50, dtype=F64) * 0.1
    found = propagate_uncertainty(lambda x: torch.cumsum(x**2, 0), [x], sigma)
    j = torch.tril(torch.ones(50, 50, dtype=F64)) * 2 * x
    assert found.method == "jacobian"  # full rank, M = N
    forced = propagate_uncertainty(
        lambda x: torch.cumsum(x**2, 0), [x], sigma, max_memory_bytes=2 * 8 * 100 * 10,
        strategy="matrix-free",  # 10 passes' tangents and products: 8 bytes × (N + M)
    )  # fmt: skip
    assert forced.result.metrics.chunks == 5 and forced.result.metrics.chunk_size == 10
    for result in (found, forced):
        torch.testing.assert_close(result.covariance, j @ sigma @ j.T, rtol=1e-12, atol=1e-12)


def test_a_float32_covariance_is_checked_at_float32s_tolerance():
    b = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    rounded = b @ b.T  # rank 2 in exact arithmetic, float32 roundoff around it
    assert factor_covariance(rounded, 5).rank == 2
    assert factor_covariance(torch.eye(5, dtype=F64), 5).rank == 5
    assert factor_covariance(torch.zeros(5, 5, dtype=F64), 5).rank == 0


def test_too_large_an_output_covariance_is_refused_before_any_derivative():
    calls = []
    with pytest.raises(ResourceExhausted, match="M\\*M = 100\\*100"):
        propagate_uncertainty(
            lambda x: x.repeat(50), [torch.ones(2, dtype=F64)], torch.eye(2, dtype=F64),
            max_elements=5000, on_outputs=calls.append,
        )  # fmt: skip
    assert calls == []


def test_an_unknown_strategy_is_refused():
    with pytest.raises(InvalidArgument, match="strategy"):
        propagate_uncertainty(torch.sin, [torch.ones(2)], torch.eye(2), strategy="exact")
