"""Derivative-based global sensitivity (issue #15) against closed forms no one here wrote.

- Ishigami (a = 7, b = 0.1, x ~ U(−π, π)³): ν₁ = ½(1 + 2bπ⁴/5 + b²π⁸/9), ν₂ = a²/2,
  ν₃ = 8b²π⁶/7; the bounds lie above the known total indices (0.558, 0.442, 0.244).
- Sobol's G-function on U(0, 1)^d: ν_i = 16/(1+a_i)² Π_{j≠i}(1 + 1/(3(1+a_j)²)), and its
  total indices from the ANOVA variances V_i = 1/(3(1+a_i)²).
- A linear model y = A x, x ~ N(μ, σ²): ν = A² exactly, Var y_i = Σ_j A_ij² σ_j², and
  the bound equals the total index A_ij² σ_j² / Var y_i.
- A ridge function sin(wᵀx): one dominant eigenvector, parallel to w.

Over a real server, with TorchScript and torch.export archives, sync and async clients.
"""

from __future__ import annotations

import asyncio
import io
import math

import grpc
import pytest
import torch

from jacserve.client import AsyncClient, InvalidArgument, Normal, Uniform
from jacserve.codec import encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

A, B = 7.0, 0.1
PI = math.pi
ISHIGAMI_NU = [0.5 * (1 + 2 * B * PI**4 / 5 + B**2 * PI**8 / 9), A**2 / 2, 8 * B**2 * PI**6 / 7]
ISHIGAMI_TOTAL = [0.558, 0.442, 0.244]
ISHIGAMI_VARIANCE = A**2 / 8 + B * PI**4 / 5 + B**2 * PI**8 / 18 + 0.5


class Ishigami(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x[0]) + 7.0 * torch.sin(x[1]) ** 2 + 0.1 * x[2] ** 4 * torch.sin(x[0])


class GFunction(torch.nn.Module):
    def __init__(self, a: list[float]) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor(a, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.prod((torch.abs(4 * x - 2) + self.a) / (1 + self.a))


def _scripted(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _exported(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, (example,)), buffer)
    return buffer.getvalue()


X3 = torch.zeros(3, dtype=torch.float64)


@pytest.mark.parametrize("archive", ["torchscript", "export"])
def test_ishigami_dgsm_matches_its_closed_form(client, archive):
    model = _scripted(Ishigami()) if archive == "torchscript" else _exported(Ishigami(), X3)
    r = client.global_sensitivity(model, X3, distribution=Uniform(-PI, PI), samples=4096, seed=3)
    nu = torch.tensor(ISHIGAMI_NU, dtype=torch.float64)
    torch.testing.assert_close(r.dgsm[0], nu, rtol=1e-2, atol=0)
    assert bool((r.dgsm_std_error[0] < 0.05 * nu).all())
    assert bool((r.total_index_bound[0] >= torch.tensor(ISHIGAMI_TOTAL, dtype=torch.float64)).all())
    assert r.output_variance[0].item() == pytest.approx(ISHIGAMI_VARIANCE, rel=1e-2)
    assert r.output_mean[0].item() == pytest.approx(A / 2, rel=1e-2)
    assert r.samples == 4096 and r.metrics.passes > 0
    (subspace,) = r.active_subspace
    assert subspace.eigenvalues.shape == (3,) and subspace.eigenvectors.shape == (3, 3)
    assert bool((subspace.eigenvalue_lower <= subspace.eigenvalues).all())
    assert bool((subspace.eigenvalues <= subspace.eigenvalue_upper).all())


def test_g_function_dgsm_and_bounds(client):
    a = [0.0, 1.0, 4.5, 9.0]
    v = [1 / (3 * (1 + ai) ** 2) for ai in a]
    variance = math.prod(1 + vi for vi in v) - 1
    total = [v[i] * math.prod(1 + v[j] for j in range(4) if j != i) / variance for i in range(4)]
    nu = [16 / (1 + a[i]) ** 2 * math.prod(1 + v[j] for j in range(4) if j != i) for i in range(4)]
    r = client.global_sensitivity(
        _scripted(GFunction(a)),
        torch.zeros(4, dtype=torch.float64),
        distribution=Uniform(0.0, 1.0),
        samples=8192,
    )
    torch.testing.assert_close(r.dgsm[0], torch.tensor(nu, dtype=torch.float64), rtol=2e-2, atol=0)
    bound = r.total_index_bound[0]
    assert bool((bound >= torch.tensor(total, dtype=torch.float64) * 0.98).all())
    assert r.output_variance[0].item() == pytest.approx(variance, rel=3e-2)


def test_a_linear_model_is_exact_and_its_bound_is_the_total_index(client):
    matrix = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    mu = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    r = client.global_sensitivity(
        lambda x: matrix @ x, mu, distribution=Normal(mu, sigma), samples=1024
    )
    torch.testing.assert_close(r.dgsm, matrix**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.dgsm_std_error, torch.zeros(2, 3, dtype=torch.float64))
    variance = (matrix**2 * sigma**2).sum(1)
    torch.testing.assert_close(r.output_variance, variance, rtol=0.05, atol=0)
    exact_total = matrix**2 * sigma**2 / variance[:, None]
    torch.testing.assert_close(r.total_index_bound, exact_total, rtol=0.05, atol=1e-12)
    torch.testing.assert_close(r.output_mean, matrix @ mu, rtol=0, atol=0.05)


def test_a_ridge_function_has_one_active_direction_along_w(client):
    w = torch.tensor([0.3, -1.2, 0.5, 2.0, 0.0], dtype=torch.float64)
    r = client.global_sensitivity(
        lambda x: torch.sin(w @ x),
        torch.zeros(5, dtype=torch.float64),
        distribution=Uniform(-1.0, 1.0),
        samples=512,
    )
    (subspace,) = r.active_subspace
    first = subspace.eigenvectors[:, 0]
    assert abs(float(first @ w) / float(w.norm())) == pytest.approx(1.0, abs=1e-9)
    assert subspace.eigenvalues[1].item() < 1e-12 * subspace.eigenvalues[0].item()


def test_only_the_varied_inputs_vary_and_the_seed_decides_the_points(client):
    def model(x, scale):
        return scale * torch.sin(x).sum()

    inputs = (torch.zeros(2, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64))
    law = Uniform(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]))
    first = client.global_sensitivity(model, inputs, wrt=[0], distribution=law, samples=256)
    again = client.global_sensitivity(model, inputs, wrt=[0], distribution=law, samples=256)
    other = client.global_sensitivity(model, inputs, wrt=[0], distribution=law, samples=256, seed=1)
    assert first.dgsm.shape == (1, 2) and first.input_names == ("0",)
    # the same points: equal up to the summation order of the server's threads
    torch.testing.assert_close(first.dgsm, again.dgsm, rtol=1e-12, atol=0)
    assert not torch.equal(first.dgsm, other.dgsm)
    # ν_0 = 9·E[cos² x0] over U(0, 1) = 9·(½ + sin 2/4)
    assert first.dgsm[0, 0].item() == pytest.approx(9 * (0.5 + math.sin(2) / 4), rel=1e-2)


def test_the_async_client_gives_the_same_indices(server, client):
    async def run():
        async with AsyncClient(server.target, timeout=120) as aclient:
            return await aclient.global_sensitivity(
                _scripted(Ishigami()), X3, distribution=Uniform(-PI, PI), samples=512
            )

    remote = asyncio.run(run())
    sync = client.global_sensitivity(
        _scripted(Ishigami()), X3, distribution=Uniform(-PI, PI), samples=512
    )
    torch.testing.assert_close(remote.dgsm, sync.dgsm, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "law, message",
    [
        (Uniform(1.0, 0.0), "high must exceed"),
        (Normal(0.0, -1.0), "std must be > 0"),
        (Uniform(torch.zeros(2), torch.ones(2)), "shape"),
        (Uniform(0.0, math.inf), "finite"),
    ],
)
def test_a_law_that_does_not_fit_is_invalid_argument(client, law, message):
    with pytest.raises(InvalidArgument, match=message):
        client.global_sensitivity(lambda x: x.sum(), X3, distribution=law, samples=8)


def test_the_client_checks_what_it_can_before_sending(client):
    with pytest.raises(ValueError, match="one law per varied input"):
        client.global_sensitivity(
            lambda x, y: x + y, (X3, X3), distribution=Uniform(0.0, 1.0), samples=8
        )
    with pytest.raises(ValueError, match="samples"):
        client.global_sensitivity(lambda x: x, X3, distribution=Uniform(0.0, 1.0), samples=1)
    with pytest.raises(TypeError, match="Uniform"):
        client.global_sensitivity(lambda x: x, X3, distribution=(0.0, 1.0), samples=8)


def test_the_server_refuses_bad_requests_from_any_client(server, client):
    model_id = client.upload(_scripted(Ishigami()))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)

        def call(**fields) -> grpc.RpcError:
            request = pb.GlobalSensitivityRequest(
                function=pb.FunctionRef(model_id=model_id),
                inputs=encode_tensors([X3]),
                **fields,
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.GlobalSensitivity(request, timeout=60)
            return refused.value

        law = Uniform(-PI, PI).to_wire()
        for error, text in (
            (call(samples=8), "one distribution per varied input"),
            (call(samples=1, distributions=[law]), "samples"),
            (call(samples=8, bootstrap=-5, distributions=[law]), "bootstrap"),
            (call(samples=8, distributions=[pb.Distribution()]), "uniform"),
        ):
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert text in error.details()
