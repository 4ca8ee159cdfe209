"""A 4096×4096 float32 Jacobian (64 MiB) comes back whole through the SDK."""

from __future__ import annotations

import torch

from jacserve.client import Client
from tests.models import archive_of


def test_a_64_mib_jacobian_comes_back_whole(client: Client):
    n = 4096
    layer = torch.nn.Linear(n, n, bias=False)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(n)
    result = client.jacobian(archive_of(layer, (x,), "torchscript"), x, mode="reverse")
    assert result.jacobian.shape == (n, n) and result.jacobian.dtype == torch.float32
    torch.testing.assert_close(result.jacobian, layer.weight.detach(), rtol=0, atol=0)
    assert result.metrics.passes == n and result.metrics.vectorized
