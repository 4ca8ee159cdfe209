"""Hessian-vector products, Hessians and Gauss–Newton products against closed forms."""

from __future__ import annotations

import asyncio

import pytest
import torch

from conftest import running_server
from jacserve.client import AsyncClient, Client, InvalidArgument, ResourceExhausted

F64 = torch.float64


class Rosenbrock(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def rosenbrock_hessian(x: torch.Tensor) -> torch.Tensor:
    """The closed form: tridiagonal."""
    n = x.numel()
    h = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n - 1):
        h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        h[i, i + 1] = h[i + 1, i] = -400 * x[i]
        h[i + 1, i + 1] += 200
    return h


class Quadratic(torch.nn.Module):
    """f(x, y) = ½ xᵀAx + sin(x)·y; its Hessian in closed form is below."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ self.a @ x + (torch.sin(x) * y).sum()


def quadratic_hessian(a: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    sym = 0.5 * (a + a.T)
    return (
        (sym - torch.diag(torch.sin(x) * y), torch.diag(torch.cos(x))),
        (torch.diag(torch.cos(x)), torch.zeros(x.numel(), y.numel(), dtype=x.dtype)),
    )


X = torch.tensor([-1.2, 1.0, 0.5, 2.0], dtype=F64)


def test_hessian_matches_the_closed_form(client):
    result = client.hessian(torch.jit.script(Rosenbrock()), X)
    torch.testing.assert_close(result.hessian, rosenbrock_hessian(X))
    assert result.metrics.passes == 4 and "forward-over-reverse" in result.metrics.mode_reason
    torch.testing.assert_close(result.output, Rosenbrock()(X))


def test_hessian_blocks_over_two_inputs(client):
    torch.manual_seed(4)
    a, x, y = torch.randn(3, 3, dtype=F64), torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    result = client.hessian(torch.jit.script(Quadratic(a)), (x, y))
    expected = quadratic_hessian(a, x, y)
    for j in range(2):
        for k in range(2):
            torch.testing.assert_close(result.hessian[j][k], expected[j][k])


def test_hvp_batched_equals_hessian_times_vectors(client):
    vectors = torch.randn(5, 4, dtype=F64)
    result = client.hvp(torch.jit.script(Rosenbrock()), X, vectors, batched=True)
    torch.testing.assert_close(result.hvp, vectors @ rosenbrock_hessian(X))
    assert result.metrics.batch_size == 5


def test_gauss_newton_products_of_a_vector_function(client):
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh()).double()
    v = torch.randn(4, dtype=F64)
    result = client.hvp(torch.jit.script(net), X, v, gauss_newton=True)
    jacobian = torch.autograd.functional.jacobian(net, X)
    torch.testing.assert_close(result.hvp, jacobian.T @ jacobian @ v)


def test_async_client_has_the_same_second_order_calls(server):
    async def main():
        async with AsyncClient(server.target, timeout=60) as client:
            h = await client.hessian(torch.jit.script(Rosenbrock()), X)
            p = await client.hvp(torch.jit.script(Rosenbrock()), X, torch.ones(4, dtype=F64))
            return h.hessian, p.hvp

    hessian, hvp = asyncio.run(main())
    torch.testing.assert_close(hessian, rosenbrock_hessian(X))
    torch.testing.assert_close(hvp, rosenbrock_hessian(X) @ torch.ones(4, dtype=F64))


def test_second_order_of_a_vector_output_is_invalid_argument(client):
    net = torch.jit.script(torch.nn.Linear(4, 2).double())
    with pytest.raises(InvalidArgument, match="needs a scalar output"):
        client.hessian(net, X)
    with pytest.raises(InvalidArgument, match="Gauss–Newton"):
        client.hvp(net, X, X)
    with pytest.raises(InvalidArgument, match="vectors"):
        client.hvp(torch.jit.script(Rosenbrock()), X, torch.ones(3, dtype=F64))


def test_a_hessian_above_the_element_limit_is_refused(tmp_path):
    x = torch.ones(11, dtype=F64)
    with (
        running_server(str(tmp_path), workers=1, max_tensor_elements=100) as small,
        Client(small.target, timeout=60) as client,
    ):
        with pytest.raises(ResourceExhausted, match="Hessian-vector products"):
            client.hessian(torch.jit.script(Rosenbrock()), x)
        assert client.hvp(torch.jit.script(Rosenbrock()), x, x).hvp.shape == (11,)
