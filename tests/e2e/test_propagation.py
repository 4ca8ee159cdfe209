"""First-order uncertainty propagation (issue #15, part 2) over a real server, against
references no one here wrote:

- a linear model y = A x propagates exactly: A Σ Aᵀ, whichever method the server takes
  (each forced by the shapes and Σ's rank);
- a mildly nonlinear model agrees with a 10⁵-sample Monte Carlo (float64) within its
  sampling error;
- several inputs with ``wrt``, dict outputs and inputs, TorchScript and torch.export
  archives, the async client and the torch-free (NumPy) client; and a Σ that is not
  one is refused, naming ``covariance``.
"""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
import torch
from torch.func import jacrev

from jacserve.client import AsyncClient, InvalidArgument, PropagationResult
from jacserve.codec import encode_tensor, encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.client_light.test_light_client import run_without_torch
from tests.pytree_models import DictInput, DictOutput, archive, assert_tree_close

F64 = torch.float64
X3 = torch.zeros(3, dtype=F64)
SYMMETRIC = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
torch.manual_seed(0)


def _covariance(n: int, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random covariance of ``n`` elements and rank ``rank`` (default full)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, rank or n, generator=g, dtype=F64)
    return b @ b.T / n


class Linear(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x


class Mild(torch.nn.Module):
    """R³ → R³, mildly nonlinear at the inputs used here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                torch.sin(x[0]) * torch.exp(0.5 * x[1]),
                x[0] * x[1] + torch.tanh(x[2]),
                torch.log1p(x[2] ** 2) + x[0],
            ]
        )


def _saved(module: torch.nn.Module, example: torch.Tensor, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(module), buffer)
    else:
        torch.export.save(torch.export.export(module, (example,)), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "m, n, rank, method",
    [
        (3, 5, None, "jacobian"),  # full rank, M <= N
        (6, 4, None, "matrix-free"),  # M > N
        (4, 5, 2, "matrix-free"),  # rank 2 < min(N, M)
    ],
)
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_a_linear_model_propagates_exactly(client, m, n, rank, method, fmt):
    a = torch.randn(m, n, dtype=F64)
    sigma = _covariance(n, rank)
    x = torch.randn(n, dtype=F64)
    r = client.propagate_uncertainty(_saved(Linear(a), x, fmt), x, sigma)
    assert isinstance(r, PropagationResult) and r.method == method
    assert r.metrics.mode_reason.startswith(method)
    torch.testing.assert_close(r.covariance, a @ sigma @ a.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.std, (a @ sigma @ a.T).diagonal().sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(r.mean, a @ x, rtol=1e-12, atol=1e-12)
    assert r.covariance.dtype == F64 and r.covariance.shape == (m, m)
    assert r.metrics.passes == (min(m, n) if method == "jacobian" else rank or n)


def test_a_mildly_nonlinear_model_agrees_with_monte_carlo(client):
    mu = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    corr = torch.tensor([[1.0, 0.3, -0.2], [0.3, 1.0, 0.4], [-0.2, 0.4, 1.0]], dtype=F64)
    scale = torch.tensor([1.0, 0.8, 1.2], dtype=F64) * 0.05
    sigma = scale[:, None] * corr * scale[None, :]
    r = client.propagate_uncertainty(Mild(), mu, sigma)
    samples = 100_000
    z = torch.randn(samples, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.vmap(Mild())(mu + z @ torch.linalg.cholesky(sigma).T)
    centred = y - y.mean(0)
    monte_carlo = centred.T @ centred / (samples - 1)
    products = centred[:, :, None] * centred[:, None, :]
    standard_error = products.std(0) / samples**0.5
    assert bool(((r.covariance - monte_carlo).abs() <= 4 * standard_error).all())
    torch.testing.assert_close(r.mean, Mild()(mu), rtol=1e-12, atol=0)
    torch.testing.assert_close(y.mean(0), r.mean, rtol=0, atol=2e-3)  # bias O(σ²)


def test_a_rank_deficient_or_zero_covariance(client):
    a = torch.randn(6, 5, dtype=F64)
    sigma = _covariance(5, rank=1)  # the inputs move together, along one direction
    r = client.propagate_uncertainty(Linear(a), torch.zeros(5, dtype=F64), sigma)
    assert r.method == "matrix-free" and r.metrics.passes == 1
    torch.testing.assert_close(r.covariance, a @ sigma @ a.T, rtol=1e-12, atol=1e-12)
    assert torch.linalg.matrix_rank(r.covariance).item() == 1
    zero = client.propagate_uncertainty(Linear(a), torch.zeros(5, dtype=F64), torch.zeros(5, 5))
    assert bool((zero.covariance == 0).all()) and zero.metrics.passes == 0
    assert any("zero" in w for w in zero.metrics.warnings)


def test_several_inputs_with_wrt(client):
    def model(x, steps, y, scale):
        return torch.cat([torch.sin(x) * scale, (y.sum() * steps).reshape(1)])

    x = torch.tensor([0.1, 0.7], dtype=F64)
    y = torch.randn(2, 2, dtype=F64)
    steps, scale = torch.tensor(3), torch.tensor(1.5, dtype=F64)
    sigma = _covariance(3)  # over x (2 elements) and scale (1), in wrt order
    r = client.propagate_uncertainty(model, (x, steps, y, scale), sigma, wrt=[0, 3])
    j = jacrev(lambda x, s: model(x, steps, y, s), argnums=(0, 1))(x, scale)
    flat = torch.cat([j[0], j[1][:, None]], 1)  # [M, N]
    torch.testing.assert_close(r.covariance, flat @ sigma @ flat.T, rtol=1e-12, atol=1e-12)
    assert r.input_names == ("0", "3") and r.covariance.shape == (3, 3)
    assert r.metrics.input_size == 3 and r.metrics.output_size == 3
    with pytest.raises(ValueError, match=r"shape \[3, 3\]"):
        client.propagate_uncertainty(model, (x, steps, y, scale), _covariance(7), wrt=[0, 3])


@pytest.mark.parametrize("fmt", ["scripted", "torch_export"])
def test_dict_outputs_and_inputs_keep_their_structure(client, fmt):
    x, y = torch.randn(3, dtype=F64), torch.randn(4, dtype=F64)
    module = DictOutput()
    r = client.propagate_uncertainty(archive(module, (x, y), fmt), (x, y), _covariance(7))
    assert_tree_close(r.mean, module(x, y))
    j = jacrev(lambda x, y: torch.cat(list(module(x, y).values())), argnums=(0, 1))(x, y)
    flat = torch.cat(j, 1)
    want = flat @ _covariance(7) @ flat.T
    torch.testing.assert_close(r.covariance, want, rtol=1e-10, atol=1e-12)
    assert r.output_names == ("logits", "hidden") and r.input_names == ("0", "1")
    assert r.covariance.shape == (6, 6)

    batch = {"x": torch.randn(3, dtype=F64), "bias": torch.randn(2, dtype=F64)}
    scale = torch.tensor(1.7, dtype=F64)
    d = DictInput()
    sigma = _covariance(5)  # over batch["x"], batch["bias"]
    r = client.propagate_uncertainty(archive(d, (batch, scale), fmt), (batch, scale), sigma, wrt=[0])  # fmt: skip
    assert r.input_names == ("0.x", "0.bias") and r.output_names == ("out", "norm")
    assert list(r.mean) == ["out", "norm"]
    j = jacrev(lambda bx, bb: torch.cat([v.reshape(-1) for v in d({"x": bx, "bias": bb}, scale).values()]), argnums=(0, 1))(batch["x"], batch["bias"])  # fmt: skip
    flat = torch.cat(j, 1)
    torch.testing.assert_close(r.covariance, flat @ sigma @ flat.T, rtol=1e-10, atol=1e-12)


def test_the_async_client_gives_the_same_covariance(server, client):
    a, sigma, x = torch.randn(4, 3, dtype=F64), _covariance(3), torch.ones(3, dtype=F64)

    async def run():
        async with AsyncClient(server.target, timeout=120) as aclient:
            return await aclient.propagate_uncertainty(Linear(a), x, sigma)

    remote = asyncio.run(run())
    sync = client.propagate_uncertainty(Linear(a), x, sigma)
    torch.testing.assert_close(remote.covariance, sync.covariance, rtol=0, atol=0)
    assert remote.method == sync.method == "matrix-free"


def test_numpy_in_numpy_out_without_torch(server, client, tmp_path):
    a = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    model_id = client.upload(_saved(Linear(torch.from_numpy(a)), X3, "torchscript"))
    got = run_without_torch(
        """
        import json, sys
        import numpy as np
        from jacserve.client import Client

        target, model_id = sys.argv[1:]
        sigma = np.diag([1.0, 2.0, 3.0])
        with Client(target, timeout=60) as client:
            r = client.propagate_uncertainty(model_id, np.ones(3), sigma)
        print(json.dumps({"type": type(r.covariance).__name__, "cov": r.covariance.tolist(),
                          "std": r.std.tolist(), "torch": "torch" in sys.modules}))
        """,
        server.target, model_id,
    )  # fmt: skip
    want = a @ np.diag([1.0, 2.0, 3.0]) @ a.T
    assert got["type"] == "ndarray" and not got["torch"]
    np.testing.assert_allclose(got["cov"], want, rtol=1e-12)
    np.testing.assert_allclose(got["std"], np.sqrt(np.diag(want)), rtol=1e-12)


@pytest.mark.parametrize(
    "covariance, message",
    [
        (SYMMETRIC + torch.triu(torch.ones(3, 3, dtype=F64), 1), "symmetric"),
        (torch.diag(torch.tensor([1.0, -0.5, 1.0], dtype=F64)), "positive semi-definite"),
    ],
)
def test_a_covariance_that_is_not_one_is_invalid_argument(client, covariance, message):
    with pytest.raises(InvalidArgument, match=f"covariance: expected a {message}"):
        client.propagate_uncertainty(lambda x: torch.sin(x), X3, covariance)


def test_the_client_checks_what_it_can_before_sending(client):
    for covariance, error, text in (
        (torch.ones(3, 2), ValueError, "square"),
        (torch.eye(4), ValueError, r"shape \[3, 3\]"),
        (torch.full((3, 3), float("nan")), ValueError, "finite"),
        (np.full((3, 3), np.inf), ValueError, "finite"),
        (torch.eye(3, dtype=torch.bool), TypeError, "real-valued"),
    ):
        with pytest.raises(error, match=f"covariance: expected .*{text}"):
            client.propagate_uncertainty(lambda x: torch.sin(x), X3, covariance)


def test_the_server_refuses_bad_covariances_from_any_client(server, client):
    model_id = client.upload(_saved(Linear(torch.ones(2, 3, dtype=F64)), X3, "torchscript"))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)

        def refused(covariance=None) -> grpc.RpcError:
            request = pb.PropagateUncertaintyRequest(
                function=pb.FunctionRef(model_id=model_id), inputs=encode_tensors([X3])
            )
            if covariance is not None:
                request.covariance.CopyFrom(encode_tensor(covariance))
            with pytest.raises(grpc.RpcError) as caught:
                stub.PropagateUncertainty(request, timeout=60)
            return caught.value

        for covariance, text in (
            (None, "got none"),
            (torch.ones(3, 2, dtype=F64), "square"),
            (torch.eye(4, dtype=F64), "shape [3, 3]"),
            (torch.ones(3, dtype=F64), "square"),
            (SYMMETRIC + torch.triu(torch.ones(3, 3, dtype=F64), 1), "symmetric"),
            (-SYMMETRIC, "positive semi-definite"),
            (torch.full((3, 3), float("nan"), dtype=F64), "finite"),
            (torch.eye(3, dtype=torch.bool), "floating-point"),
        ):
            error = refused(covariance)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert "covariance" in error.details() and text in error.details(), error.details()
