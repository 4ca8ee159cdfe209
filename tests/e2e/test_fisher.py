"""Parameter Jacobians and Fisher information (issue #15, item 3) against references no
one here wrote:

- parameter Jacobians equal ``torch.func.jacrev`` over ``torch.func.functional_call``
  (TorchScript and torch.export archives, both modes);
- the Fisher information of linear regression y = X θ + ε is XᵀX/σ² exactly, and
  Xᵀ Σ⁻¹ X with a full noise covariance Σ;
- a model with a redundant parameter, y = (a·b)·x, has a singular Fisher information:
  one eigenvalue ~0, NaN standard errors and a RuntimeWarning.

Over a real server, sync and async clients.
"""

from __future__ import annotations

import asyncio
import io
import math
import warnings

import grpc
import pytest
import torch
from torch.func import functional_call, jacrev

from jacserve.client import (
    AsyncClient,
    FailedPrecondition,
    FisherResult,
    InvalidArgument,
    ParameterJacobianResult,
    ParameterSlice,
)
from jacserve.codec import encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc


def _scripted(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _exported(module: torch.nn.Module, *example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, example), buffer)
    return buffer.getvalue()


def _archive(kind: str, module: torch.nn.Module, *example: torch.Tensor) -> bytes:
    return _scripted(module) if kind == "torchscript" else _exported(module, *example)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()


def _reference(module: torch.nn.Module, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {name: p.detach() for name, p in module.named_parameters()}
    return jacrev(lambda p: functional_call(module, p, inputs))(params)


X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.sin(self.w @ x)
        return y, self.c * (y**2).sum()


class Redundant(torch.nn.Module):
    """y = (a·b)·x: only the product a·b is identifiable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a * self.b) * x


class Scaled(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return t * x


def _regression() -> torch.nn.Module:
    torch.manual_seed(2)
    return torch.nn.Linear(3, 1, bias=False).double()


@pytest.mark.parametrize("archive", ["torchscript", "export"])
@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_parameter_jacobians_match_jacrev_over_functional_call(client, archive, mode):
    mlp = _mlp()
    expected = _reference(mlp, X)
    r = client.jacobian(_archive(archive, mlp, X), X, wrt="parameters", mode=mode)
    assert isinstance(r, ParameterJacobianResult)
    assert list(r.jacobian) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, block in r.jacobian.items():
        assert block.shape == (5, 2, *dict(mlp.named_parameters())[name].shape)
        torch.testing.assert_close(block, expected[name], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.output, mlp(X).detach())
    assert r.metrics.mode == ("forward" if mode == "forward" else "reverse")
    assert r.metrics.passes == (4 * 3 + 4 + 2 * 4 + 2 if mode == "forward" else 10)


@pytest.mark.parametrize("archive", ["torchscript", "export"])
def test_named_parameters_and_structured_outputs(client, archive):
    model = TwoOutputs()
    x = torch.tensor([0.3, -0.4], dtype=torch.float64)
    expected = _reference(model, x)
    r = client.parameter_jacobian(_archive(archive, model, x), x, parameters=["w"])
    assert isinstance(r.jacobian, tuple) and len(r.jacobian) == 2
    assert [list(block) for block in r.jacobian] == [["w"], ["w"]]
    torch.testing.assert_close(r.jacobian[0]["w"], expected[0]["w"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.jacobian[1]["w"], expected[1]["w"], rtol=1e-12, atol=1e-12)
    every = client.jacobian(_archive(archive, model, x), x, parameters=["c", "w"])
    assert list(every.jacobian[1]) == ["c", "w"]
    torch.testing.assert_close(every.jacobian[1]["c"], expected[1]["c"])
    torch.testing.assert_close(every.jacobian[0]["c"], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("archive", ["torchscript", "export"])
def test_fisher_of_linear_regression_is_xtx_over_sigma_squared(client, archive):
    design = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = _archive(archive, _regression(), design)
    sigma = 0.3
    r = client.fisher_information(model, design, noise_std=sigma)
    assert isinstance(r, FisherResult) and r.invertible
    exact = design.T @ design / sigma**2
    torch.testing.assert_close(r.matrix, exact, rtol=1e-12, atol=1e-12)
    assert r.names == (ParameterSlice("weight", 0, 3, (1, 3)),)
    torch.testing.assert_close(
        r.eigenvalues, torch.linalg.eigvalsh(exact).flip(0), rtol=1e-10, atol=0
    )
    torch.testing.assert_close(
        r.standard_errors, torch.linalg.inv(exact).diagonal().sqrt(), rtol=1e-10, atol=0
    )
    assert r.output.shape == (8, 1)

    # A full noise covariance Σ over the 8 outputs: F = Xᵀ Σ⁻¹ X.
    a = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    covariance = a @ a.T / 8 + 0.5 * torch.eye(8, dtype=torch.float64)
    full = client.fisher_information(model, design, noise_covariance=covariance)
    torch.testing.assert_close(
        full.matrix, design.T @ torch.linalg.solve(covariance, design), rtol=1e-10, atol=1e-10
    )


def test_a_redundant_parameter_is_not_identifiable(client):
    x = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="singular"):
        r = client.fisher_information(_scripted(Redundant()), x, noise_std=0.1)
    assert not r.invertible
    assert r.names == (ParameterSlice("a", 0, 1, ()), ParameterSlice("b", 1, 2, ()))
    assert all(math.isnan(v) for v in r.standard_errors.tolist())
    # J = [b·x, a·x]: F = (xᵀx/σ²) [[b², ab], [ab, a²]], eigenvalues (a²+b²)·xᵀx/σ² and 0
    top = (2.0**2 + 1.5**2) * float(x @ x) / 0.1**2
    assert r.eigenvalues[0].item() == pytest.approx(top, rel=1e-12)
    assert abs(r.eigenvalues[1].item()) <= 1e-12 * top
    (warning,) = [w for w in r.metrics.warnings if "singular" in w]
    assert "a" in warning.split("involving")[1] and "b" in warning.split("involving")[1]
    # Either parameter alone is identifiable.
    archive = _scripted(Redundant())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        alone = client.fisher_information(archive, x, parameters=["a"])
    assert alone.invertible and alone.matrix.item() == pytest.approx(1.5**2 * float(x @ x))


def test_fisher_information_about_inputs(client):
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    r = client.fisher_information(_scripted(Scaled()), (x, t), wrt=[1], noise_std=2.0)
    assert r.names == (ParameterSlice("input[1]", 0, 1, ()),)
    assert r.matrix.item() == pytest.approx(float(x @ x) / 4.0, rel=1e-12)
    assert r.standard_errors.item() == pytest.approx(2.0 / math.sqrt(float(x @ x)), rel=1e-12)
    with pytest.warns(RuntimeWarning, match="singular"):
        both = client.fisher_information(_scripted(Scaled()), (x, t), wrt=[0, 1])
    assert [s.name for s in both.names] == ["input[0]", "input[1]"]
    assert both.matrix.shape == (4, 4) and not both.invertible  # 3 outputs, 4 unknowns


def test_the_async_client_gives_the_same_results(server, client):
    design = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model = _scripted(_regression())

    async def run():
        async with AsyncClient(server.target, timeout=120) as aclient:
            fisher = await aclient.fisher_information(model, design, noise_std=0.5)
            jacobian = await aclient.jacobian(model, design, wrt="parameters")
            with pytest.warns(RuntimeWarning):
                singular = await aclient.fisher_information(
                    _scripted(Redundant()), torch.ones(2, dtype=torch.float64)
                )
            return fisher, jacobian, singular

    fisher, jacobian, singular = asyncio.run(run())
    torch.testing.assert_close(fisher.matrix, client.fisher_information(model, design, noise_std=0.5).matrix, rtol=0, atol=0)  # fmt: skip
    torch.testing.assert_close(jacobian.jacobian["weight"], design[:, None, None, :])
    assert not singular.invertible


def test_failures_are_invalid_argument_or_value_error(client):
    model = _scripted(_mlp())
    with pytest.raises(InvalidArgument, match=r"unknown name\(s\) \['nope'\].*0\.weight"):
        client.jacobian(model, X, parameters=["nope"])
    with pytest.raises(InvalidArgument, match="unknown name"):
        client.fisher_information(model, X, parameters=["nope"])
    with pytest.raises(ValueError, match="noise_std"):
        client.fisher_information(model, X, noise_std=0.0)
    with pytest.raises(ValueError, match="noise_std"):
        client.fisher_information(model, X, noise_std=-1.0)
    with pytest.raises(ValueError, match="not both"):
        client.fisher_information(model, X, parameters=["0.bias"], wrt=[0])
    with pytest.raises(ValueError, match="'parameters'"):
        client.jacobian(model, X, wrt="params")
    eye = torch.eye(10, dtype=torch.float64)
    asymmetric = eye.clone()
    asymmetric[0, 1] = 0.5
    indefinite = eye.clone()
    indefinite[3, 3] = -1.0
    for covariance, text in (
        (torch.eye(3, dtype=torch.float64), r"noise_covariance: expected shape \[10, 10\]"),
        (asymmetric, "noise_covariance: not symmetric"),
        (indefinite, "noise_covariance: not positive definite"),
        (eye * math.nan, "noise_covariance: not finite"),
    ):
        with pytest.raises(InvalidArgument, match=text):
            client.fisher_information(model, X, noise_covariance=covariance)
    with pytest.raises(FailedPrecondition, match="no floating-point parameters"):
        client.fisher_information(_scripted(Scaled()), (X, X))


def test_the_server_refuses_bad_requests_from_any_client(server, client):
    model_id = client.upload(_scripted(Redundant()))
    x = torch.ones(2, dtype=torch.float64)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        for call, text in (
            (lambda: stub.FisherInformation(pb.FisherInformationRequest(
                function=pb.FunctionRef(model_id=model_id), inputs=encode_tensors([x]),
                noise_std=-1.0), timeout=60), "noise_std"),
            (lambda: stub.FisherInformation(pb.FisherInformationRequest(
                function=pb.FunctionRef(model_id=model_id), inputs=encode_tensors([x]),
                noise_std=math.inf), timeout=60), "noise_std"),
            (lambda: stub.FisherInformation(pb.FisherInformationRequest(
                function=pb.FunctionRef(model_id=model_id), inputs=encode_tensors([x]),
                parameters=["a"], wrt=[0]), timeout=60), "not both"),
            (lambda: stub.ParameterJacobian(pb.ParameterJacobianRequest(
                function=pb.FunctionRef(model_id=model_id), inputs=encode_tensors([x]),
                parameters=["a", "a"]), timeout=60), "at most once"),
        ):  # fmt: skip
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert text in refused.value.details()
        # noise_std 0 means 1.
        response = stub.FisherInformation(
            pb.FisherInformationRequest(
                function=pb.FunctionRef(model_id=model_id),
                inputs=encode_tensors([x]),
                parameters=["a"],
            ),
            timeout=60,
        )
        assert response.invertible and len(response.names) == 1
