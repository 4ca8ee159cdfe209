"""Sensitivity summaries, top singular triplets and sparse Jacobians against references."""

from __future__ import annotations

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, InvalidArgument, ResourceExhausted

F64 = torch.float64


class PowerLaw(torch.nn.Module):
    """y0 = 3·a^2·b^-1 (elasticities 2, −1); y1 = a·b^0.5 (1, 0.5); y2 = a − a (zero)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([3 * a**2 / b, a * b.sqrt(), a - a]).reshape(3)


def test_elasticities_of_a_power_law_are_its_exponents(client):
    a, b = torch.tensor(2.0, dtype=F64), torch.tensor(4.0, dtype=F64)
    result = client.sensitivity(torch.jit.script(PowerLaw()), (a, b), top_k=2)
    e = result.elasticities
    torch.testing.assert_close(e[:2], torch.tensor([[2.0, -1.0], [1.0, 0.5]], dtype=F64))
    assert torch.isnan(e[2]).all()  # y2 = 0: undefined
    assert any("undefined" in w for w in result.metrics.warnings)
    torch.testing.assert_close(
        result.input_elasticity_norms, torch.tensor([5**0.5, 1.25**0.5], dtype=F64)
    )
    assert [(r.input, r.element) for r in result.top_inputs] == [(0, 0), (1, 0)]
    jacobian = torch.autograd.functional.jacobian(PowerLaw(), (a, b))
    dense = torch.stack([j.reshape(3) for j in jacobian], dim=1)
    torch.testing.assert_close(result.input_norms, dense.norm(dim=0))
    torch.testing.assert_close(result.output_norms, dense.norm(dim=1))


class Tanh(torch.nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a @ x)


def _operator(n: int, m: int, seed: int) -> torch.Tensor:
    """A matrix with a decaying spectrum (well-separated top singular values)."""
    torch.manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64))
    spectrum = 10 * 0.8 ** torch.arange(min(n, m), dtype=F64)
    return u[:, : min(n, m)] @ torch.diag(spectrum) @ v[:, : min(n, m)].T


def test_top_singular_matches_the_dense_svd(client):
    a = _operator(60, 80, seed=1)
    x = 0.1 * torch.randn(60, dtype=F64)
    result = client.top_singular(torch.jit.script(Tanh(a)), x, k=4)
    dense = torch.autograd.functional.jacobian(Tanh(a), x)
    u, s, vh = torch.linalg.svd(dense)
    torch.testing.assert_close(result.values, s[:4], rtol=1e-9, atol=0)
    for i in range(4):  # singular vectors are defined up to sign
        assert abs(float(result.input_directions[i] @ vh[i])) == pytest.approx(1, abs=1e-8)
        assert abs(float(result.output_directions[i] @ u[:, i])) == pytest.approx(1, abs=1e-8)
    assert float(result.residuals.max()) < 1e-9
    assert result.metrics.passes == 2 * result.steps + 8


def test_top_singular_where_the_dense_jacobian_is_refused(tmp_path):
    n = 1500  # J would hold 2.25M entries; the server allows 1M
    torch.manual_seed(2)
    diagonal = 10 * 0.9 ** torch.arange(n, dtype=F64)[torch.randperm(n)]
    clustered = torch.linspace(1, 2, n, dtype=F64)  # gaps of 7e-4: slow to converge
    x = torch.randn(n, dtype=F64)
    with (
        running_server(str(tmp_path), workers=1, max_tensor_elements=1_000_000) as small,
        Client(small.target, timeout=120) as client,
    ):
        model = torch.jit.script(Scale(diagonal))
        with pytest.raises(ResourceExhausted, match="elements"):
            client.jacobian(model, x)
        result = client.top_singular(model, x, k=3)
        hard_model = torch.jit.script(Scale(clustered))
        hard = client.top_singular(hard_model, x, k=3)
        with pytest.warns(RuntimeWarning, match="did not converge"):
            rushed = client.top_singular(hard_model, x, k=3, steps=40)
    torch.testing.assert_close(result.values, diagonal.sort(descending=True).values[:3])
    assert float(result.residuals.max()) < 1e-8
    # slow to converge: the server took more than the first 40 steps until it did
    assert hard.converged and hard.steps > 40
    torch.testing.assert_close(hard.values, clustered.flip(0)[:3])
    # held to 40 steps, the values are approximate and the answer says so
    error = float((rushed.values - clustered.flip(0)[:3]).abs().max())
    assert not rushed.converged and error > 1e-4 and float(rushed.residuals.max()) > 1e-4


class Scale(torch.nn.Module):
    def __init__(self, d: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("d", d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d * x + 0.0 * x.sum()


class Reaction(torch.nn.Module):
    """A discretised 1-D reaction-diffusion residual: tridiagonal Jacobian."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        inner = u[:-2] - 2 * u[1:-1] + u[2:]
        return torch.cat([u[:1], inner + u[1:-1] ** 3, u[-1:]])


class Stencil2D(torch.nn.Module):
    """A 5-point Laplacian on a 12 x 12 grid plus a nonlinearity."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        g = u.reshape(12, 12)
        padded = torch.nn.functional.pad(g, (1, 1, 1, 1))
        lap = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * g
        return (lap + torch.sin(g)).reshape(-1)


@pytest.mark.parametrize(
    ("module", "n", "most_colors"),
    [(Reaction(), 200, 3), (Stencil2D(), 144, 7)],  # 2-D: greedy 7, optimal 5
)
def test_sparse_jacobian_by_colouring(client, module, n, most_colors):
    u = torch.randn(n, dtype=F64)
    result = client.jacobian(torch.jit.script(module), u, sparsity="detect")
    dense = torch.autograd.functional.jacobian(module, u)
    torch.testing.assert_close(result.jacobian.to_dense(), dense)
    assert result.metrics.passes <= most_colors
    again = client.jacobian(torch.jit.script(module), u + 1, sparsity="detect")
    torch.testing.assert_close(
        again.jacobian.to_dense(), torch.autograd.functional.jacobian(module, u + 1)
    )


def test_a_given_pattern_is_used_and_checked(client):
    u = torch.randn(50, dtype=F64)
    mask = torch.autograd.functional.jacobian(Reaction(), u) != 0
    result = client.jacobian(torch.jit.script(Reaction()), u, sparsity=mask, mode="reverse")
    assert result.metrics.mode == "reverse" and result.metrics.passes == 3
    torch.testing.assert_close(
        result.jacobian.to_dense(), torch.autograd.functional.jacobian(Reaction(), u)
    )
    with pytest.raises(InvalidArgument, match="declared 49 x 50"):
        client.jacobian(torch.jit.script(Reaction()), u, sparsity=mask[:49])
    with pytest.raises(InvalidArgument, match="indices must lie"):
        client.jacobian(torch.jit.script(Reaction()), u, sparsity=([0, 60], [0, 1]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, m, x: c.top_singular(m, x, k=0), "k must be in 1..min"),
        (lambda c, m, x: c.top_singular(m, x, k=9), "k must be in 1..min"),
        (lambda c, m, x: c.top_singular(m, x, k=3, steps=2), "steps must be >= k"),
        (lambda c, m, x: c.sensitivity(m, x, top_k=-1), "top_k must be >= 0"),
        (lambda c, m, x: c.jacobian(m, x, sparsity="detect", probes=-1), "probes must be >= 0"),
    ],
)
def test_bad_analysis_requests_are_invalid_argument(client, call, message):
    with pytest.raises(InvalidArgument, match=message):
        call(client, torch.jit.script(Reaction()), torch.randn(8, dtype=F64))


def test_top_singular_of_a_scalar_input_and_output(client):
    class Scalar(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x) * 2

    x = torch.tensor(0.5, dtype=torch.float64)
    result = client.top_singular(torch.jit.script(Scalar()), x, k=1)
    torch.testing.assert_close(result.values, (2 * torch.cos(x)).abs().reshape(1))


@pytest.mark.parametrize("shape", [(3, 5), (1, 6), (6, 2)], ids=["wide", "scalar output", "tall"])
def test_top_singular_is_exact_for_wide_tall_and_scalar_output_jacobians(client, shape):
    m, n = shape
    torch.manual_seed(m * n)
    matrix = torch.randn(m, n, dtype=torch.float64)

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("matrix", matrix)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.matrix @ x)

    model = torch.jit.script(Linear())
    x = torch.randn(n, dtype=torch.float64) * 0.3
    k = min(m, n)
    result = client.top_singular(model, x, k=k)
    dense = torch.linalg.svdvals(torch.func.jacrev(model)(x))
    torch.testing.assert_close(result.values, dense[:k], rtol=1e-10, atol=1e-12)
    assert float(result.residuals.max()) < 1e-10


def test_top_singular_says_when_its_values_are_approximate(client):
    torch.manual_seed(1)
    matrix = torch.randn(60, 80, dtype=torch.float64)

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("matrix", matrix)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.matrix @ x

    model, x = torch.jit.script(Linear()), torch.zeros(80, dtype=torch.float64)
    dense = torch.linalg.svdvals(matrix)[:3]
    automatic = client.top_singular(model, x, k=3)  # steps doubled until converged
    assert automatic.converged and float(automatic.residuals.max()) <= 1e-8
    torch.testing.assert_close(automatic.values, dense, rtol=1e-8, atol=0)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        few = client.top_singular(model, x, k=3, steps=4)
    assert not few.converged and float(few.residuals.max()) > 1e-8
    assert any("did not converge" in w for w in few.metrics.warnings)
