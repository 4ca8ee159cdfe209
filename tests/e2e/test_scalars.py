"""0-d (scalar) inputs and outputs on every RPC, against torch.func in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian, jacrev, jvp, vjp

from tests.pytree_models import F64, archive, assert_tree_close


class ScalarMix(torch.nn.Module):
    """A 0-d and a vector input; a 0-d and a vector output."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.8, dtype=F64))

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sin(a * self.w) * x.sum(), torch.exp(-a) * x * x


class ScalarOnly(torch.nn.Module):
    """A scalar of a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.sin(a * self.w) * a


A = torch.tensor(0.6, dtype=F64)
X = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
FORMATS = ("scripted", "torch_export")


@pytest.fixture(scope="module", params=FORMATS)
def models(request, client):
    mix, only = ScalarMix(), ScalarOnly()
    return (
        (client.upload(archive(mix, (A, X), request.param)), mix),
        (client.upload(archive(only, (A,), request.param)), only),
    )


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_jacobians_with_scalars(client, models, mode):
    (mix_id, mix), (only_id, only) = models
    assert_tree_close(
        client.jacobian(mix_id, (A, X), mode=mode).jacobian, jacrev(mix, (0, 1))(A, X)
    )
    r = client.jacobian(only_id, A, mode=mode, stream=True)
    assert r.jacobian.shape == () and r.output.shape == ()
    torch.testing.assert_close(r.jacobian, jacrev(only)(A), atol=1e-12, rtol=1e-12)
    points = torch.tensor([0.1, 0.5, 2.0], dtype=F64)
    batched = client.jacobian(only_id, points, mode=mode, batched=True)
    torch.testing.assert_close(batched.jacobian, torch.vmap(jacrev(only))(points))


def test_products_with_scalars(client, models):
    (mix_id, mix), (only_id, only) = models
    tangents = (torch.tensor(0.3, dtype=F64), torch.ones(3, dtype=F64))
    assert_tree_close(client.jvp(mix_id, (A, X), tangents).jvp, jvp(mix, (A, X), tangents)[1])
    one = torch.tensor(1.0, dtype=F64)
    torch.testing.assert_close(client.jvp(only_id, A, one).jvp, jvp(only, (A,), (one,))[1])
    cotangents = (torch.tensor(-0.7, dtype=F64), torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert_tree_close(client.vjp(mix_id, (A, X), cotangents).vjp, vjp(mix, A, X)[1](cotangents))
    torch.testing.assert_close(client.vjp(only_id, A, one).vjp, vjp(only, A)[1](one)[0])
    ks = torch.tensor([1.0, -2.0], dtype=F64)
    torch.testing.assert_close(
        client.jvp(only_id, A, ks, batched=True).jvp, ks * jacrev(only)(A)
    )  # fmt: skip
    torch.testing.assert_close(
        client.vjp(only_id, A, ks, batched=True).vjp, ks * jacrev(only)(A)
    )  # fmt: skip


def test_gradients_and_second_order_with_scalars(client, models):
    (mix_id, mix), (only_id, only) = models
    g = client.parameter_gradients(only_id, A)
    (want,) = torch.autograd.grad(only(A), [only.w])
    torch.testing.assert_close(g.gradients["w"], want)
    cotangents = (torch.tensor(2.0, dtype=F64), torch.ones(3, dtype=F64))
    out = mix(A, X)
    (want,) = torch.autograd.grad((out[0] * 2.0) + out[1].sum(), [mix.w])
    torch.testing.assert_close(
        client.parameter_gradients(mix_id, (A, X), cotangents).gradients["w"], want
    )
    h = client.hessian(only_id, A)
    torch.testing.assert_close(h.hessian, hessian(only)(A))
    v = torch.tensor(0.25, dtype=F64)
    torch.testing.assert_close(client.hvp(only_id, A, v).hvp, hessian(only)(A) * v)
    gn = client.hvp(mix_id, (A, X), (v, torch.ones(3, dtype=F64)), gauss_newton=True)
    blocks = jacrev(mix, (0, 1))(A, X)
    j = torch.cat(
        [
            torch.cat([b.reshape(o.numel(), -1) for b in row], 1)
            for row, o in zip(blocks, out, strict=True)
        ]
    )
    want = j.T @ (j @ torch.cat([v.reshape(1), torch.ones(3, dtype=F64)]))
    assert_tree_close(gn.hvp, (want[0], want[1:]))


def test_analysis_with_scalars(client, models):
    (mix_id, mix), (only_id, only) = models
    out = mix(A, X)
    blocks = jacrev(mix, (0, 1))(A, X)
    j = torch.cat(
        [
            torch.cat([b.reshape(o.numel(), -1) for b in row], 1)
            for row, o in zip(blocks, out, strict=True)
        ]
    )
    s = client.sensitivity(mix_id, (A, X))
    y = torch.cat([o.reshape(-1) for o in out]).detach()
    torch.testing.assert_close(s.elasticities, j * torch.cat([A.reshape(1), X])[None] / y[:, None])
    t = client.top_singular(mix_id, (A, X), 2)
    torch.testing.assert_close(t.values, torch.linalg.svdvals(j)[:2], atol=1e-8, rtol=1e-8)
    t = client.top_singular(only_id, A, 1)
    torch.testing.assert_close(t.values, jacrev(only)(A).abs().reshape(1), atol=1e-8, rtol=1e-8)
    sparse = client.jacobian(mix_id, (A, X), sparsity="detect")
    torch.testing.assert_close(sparse.jacobian.to_dense(), j.detach())
    sparse = client.jacobian(only_id, A, sparsity="detect")
    torch.testing.assert_close(sparse.jacobian.to_dense(), jacrev(only)(A).reshape(1, 1))


def test_verification_with_scalars(client, models):
    (mix_id, _), (only_id, _) = models
    one = torch.tensor(1.0, dtype=F64)
    for r in (
        client.jacobian(only_id, A, verify=2),
        client.jvp(only_id, A, one, verify=1),
        client.vjp(only_id, A, one, verify=2),
        client.parameter_gradients(only_id, A, verify=2),
        client.jacobian(mix_id, (A, X), verify=2),
    ):
        assert r.metrics.verification.max_relative_error < 1e-6, r.metrics.verification
