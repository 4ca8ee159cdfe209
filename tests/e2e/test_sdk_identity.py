"""The SDK never answers for a model with an older archive: every change to what
determines the derivative gives the new model's Jacobian (checked against torch.func)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

X = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)


class Steps(nn.Module):
    """y = x · scale, ``steps`` times; ``scale`` a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 1
        self.register_buffer("scale", torch.full((3,), 1.5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = torch.sin(x) * self.scale
        return x


class Helper(nn.Module):
    """forward calls a helper method: changing only the helper changes the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class OtherHelper(Helper):
    def inner(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * 2


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.Tanh()).double()


def _swap_activation(model: nn.Module) -> nn.Module:
    return nn.Sequential(model[0], nn.ReLU())  # the same weights


def _more_steps(model: Steps) -> Steps:
    model.steps = 5
    return model


def _new_buffer(model: Steps) -> Steps:
    model.scale.mul_(-2.0)
    return model


def _new_parameter(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model[0].weight.add_(0.5)
    return model


def _new_helper(model: Helper) -> Helper:
    model.__class__ = OtherHelper
    return model


CHANGES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Module]]] = {
    "submodule (activation)": (_sequential, _swap_activation),
    "plain attribute": (Steps, _more_steps),
    "buffer": (Steps, _new_buffer),
    "parameter": (_sequential, _new_parameter),
    "method code": (Helper, _new_helper),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_module_gets_its_own_jacobian(client, change):
    build, alter = CHANGES[change]
    model = build()
    before = client.jacobian(model, X).jacobian
    torch.testing.assert_close(before, torch.func.jacrev(model)(X))
    changed = alter(model)
    expected = torch.func.jacrev(changed)(X)
    assert not torch.allclose(expected, before), "the change must matter"
    torch.testing.assert_close(client.jacobian(changed, X).jacobian, expected)


def test_a_changed_closure_gets_its_own_jacobian(client):
    def scaled(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: torch.sin(x) * factor

    torch.testing.assert_close(
        client.jacobian(scaled(2.0), X).jacobian, torch.func.jacrev(scaled(2.0))(X)
    )
    torch.testing.assert_close(
        client.jacobian(scaled(-3.0), X).jacobian, torch.func.jacrev(scaled(-3.0))(X)
    )
