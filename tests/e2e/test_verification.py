"""``verify=``: derivatives checked against float64 central finite differences."""

from __future__ import annotations

import grpc
import pytest
import torch

from jacserve.client import InvalidArgument


class Smooth(torch.nn.Module):
    """Two inputs, two outputs, float32 weights: checked in float64 all the same."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.w = torch.nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.w @ x) * y.exp().sum()
        return h, (x * x).sum().reshape(1) + y[:1].sin()


class Detached(torch.nn.Module):
    """x · stop_gradient(x): autodiff says x, the true derivative is 2x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.detach()


X, Y = torch.randn(3), torch.randn(2)


def test_a_correct_jacobian_agrees_with_finite_differences(client):
    result = client.jacobian(torch.jit.script(Smooth()), (X, Y), verify=4)
    check = result.metrics.verification
    assert check is not None and len(check.relative_errors) == 4
    assert check.precision == "float64" and check.step > 0
    # float32 derivatives against a float64 reference: float32 rounding, not more
    assert check.max_relative_error < 1e-5, check


def test_jvp_and_vjp_are_checked(client):
    model = torch.jit.script(Smooth())
    jvp = client.jvp(model, (X, Y), (torch.randn(3), torch.randn(2)), verify=True)
    vjp = client.vjp(model, (X, Y), (torch.randn(4), torch.randn(1)), verify=2)
    assert len(jvp.metrics.verification.relative_errors) == 1  # its own tangent
    assert len(vjp.metrics.verification.relative_errors) == 2
    assert jvp.metrics.verification.max_relative_error < 1e-5
    assert vjp.metrics.verification.max_relative_error < 1e-5
    batched = client.jvp(model, (X, Y), (torch.randn(5, 3), torch.randn(5, 2)), batched=True,
                         verify=3)  # fmt: skip
    assert len(batched.metrics.verification.relative_errors) == 3


def test_a_wrong_derivative_is_caught(client):
    x = torch.linspace(0.5, 1.5, 4)
    result = client.jacobian(torch.jit.script(Detached()), x, verify=3)
    torch.testing.assert_close(result.jacobian, torch.diag(x))  # what autodiff says
    assert result.metrics.verification.max_relative_error > 0.3  # the truth is diag(2x)
    assert any("detach" in w for w in result.metrics.warnings)


def test_parameter_gradients_are_checked_along_parameter_directions(client):
    result = client.parameter_gradients(
        torch.jit.script(Smooth()), (X, Y), (torch.randn(4), torch.randn(1)), verify=2
    )
    assert len(result.metrics.verification.relative_errors) == 2
    assert result.metrics.verification.max_relative_error < 1e-5


def test_no_verification_unless_asked(client):
    assert client.jacobian(torch.jit.script(Smooth()), (X, Y)).metrics.verification is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, m: c.jacobian(m, (X, Y), verify=17), "verify_directions must be in 0..16"),
        (lambda c, m: c.jacobian(m, (X[None], Y[None]), batched=True, verify=2), "one point"),
    ],
)  # fmt: skip
def test_bad_verification_requests_are_invalid_argument(client, call, message):
    with pytest.raises(InvalidArgument, match=message) as info:
        call(client, torch.jit.script(Smooth()))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
