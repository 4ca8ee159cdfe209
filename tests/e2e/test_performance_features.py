"""Batching, memory budgets, chunking and devices through the SDK and a real server."""

from __future__ import annotations

import time

import pytest
import torch
from torch.func import jacrev, vmap

from jacserve.client import Client, InvalidArgument, ResourceExhausted
from tests.models import MLP, archive_of

F64 = torch.float64
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def mlp_id(client: Client) -> str:
    return client.upload(
        archive_of(MLP(4, 16, 3, F64), (torch.zeros(4, dtype=F64),), "torchscript")
    )


def _reference() -> torch.nn.Module:
    return MLP(4, 16, 3, F64)


def test_batched_jvp_and_vjp(client: Client, mlp_id: str):
    model = _reference()
    x = torch.randn(4, dtype=F64)
    tangents, cotangents = torch.randn(10, 4, dtype=F64), torch.randn(10, 3, dtype=F64)
    jvps = client.jvp(mlp_id, x, tangents, batched=True)
    vjps = client.vjp(mlp_id, x, cotangents, batched=True)
    jac = torch.autograd.functional.jacobian(model, x)
    torch.testing.assert_close(jvps.jvp, tangents @ jac.T)
    torch.testing.assert_close(vjps.vjp, cotangents @ jac)
    assert jvps.metrics.batch_size == vjps.metrics.batch_size == 10
    assert jvps.output.shape == (3,)  # the output is not batched, only the tangents


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_batched_jacobian_matches_vmap_of_jacrev(client: Client, fmt):
    model = _reference()
    points = torch.randn(6, 4, dtype=F64)
    model_id = client.upload(archive_of(model, (points[0],), fmt))
    result = client.jacobian(model_id, points, batched=True)
    torch.testing.assert_close(result.jacobian, vmap(jacrev(model))(points))
    assert result.output.shape == (6, 3) and result.metrics.batch_size == 6


def test_memory_budget_chunks_and_reports(client: Client):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 1500), torch.nn.Tanh(), torch.nn.Linear(1500, 1500)
    )
    x = torch.randn(32)
    model_id = client.upload(archive_of(model, (x,), "torchscript"))
    unlimited = client.jacobian(model_id, x, mode="reverse")
    budgeted = client.jacobian(model_id, x, mode="reverse", max_memory_bytes=24 << 20)
    torch.testing.assert_close(budgeted.jacobian, unlimited.jacobian)
    assert unlimited.metrics.chunks == 1 and budgeted.metrics.chunks > 1
    assert budgeted.metrics.memory_budget_bytes == 24 << 20
    assert 0 < budgeted.metrics.estimated_peak_bytes <= 24 << 20
    with pytest.raises(ResourceExhausted, match=r"needs at least \d+ bytes"):
        client.jacobian(model_id, x, mode="reverse", max_memory_bytes=100_000)
    chunked = client.jacobian(model_id, x, mode="forward", chunk_size=5)
    assert chunked.metrics.chunks == 7  # 32 passes, 5 at a time
    torch.testing.assert_close(chunked.jacobian, unlimited.jacobian, rtol=1e-5, atol=1e-6)


def test_bad_options_are_invalid_arguments(client: Client, mlp_id: str):
    x = torch.randn(4, dtype=F64)
    with pytest.raises(
        InvalidArgument, match="options: max_memory_bytes and chunk_size must be >= 0"
    ):
        client.jacobian(mlp_id, x, chunk_size=-1)
    with pytest.raises(InvalidArgument, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        client.jacobian(mlp_id, x, device="tpu:0")
    with pytest.raises(InvalidArgument, match="a batched input needs a leading batch dimension"):
        client.jacobian(mlp_id, torch.tensor(1.0, dtype=F64), batched=True)


@pytest.mark.skipif(CUDA, reason="checks the message a CPU-only server gives")
def test_asking_a_cpu_server_for_cuda_is_a_clear_error(client: Client, mlp_id: str):
    with pytest.raises(InvalidArgument, match="'cuda' is not available on this server"):
        client.jacobian(mlp_id, torch.randn(4, dtype=F64), device="cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_cuda_derivatives_match_cpu(client: Client, fmt):
    model = _reference()
    x = torch.randn(4, dtype=F64)
    model_id = client.upload(archive_of(model, (x,), fmt))
    for mode in ("forward", "reverse", "auto"):
        on_gpu = client.jacobian(model_id, x, mode=mode, device="cuda")
        torch.testing.assert_close(on_gpu.jacobian, torch.autograd.functional.jacobian(model, x))
        assert on_gpu.metrics.device.startswith("cuda")
        assert on_gpu.metrics.memory_method == "cuda_allocator_peak"
        assert on_gpu.metrics.peak_memory_bytes > 0
    v = torch.randn(4, dtype=F64)
    torch.testing.assert_close(
        client.jvp(model_id, x, v, device="cuda").jvp, torch.autograd.functional.jvp(model, x, v)[1]
    )
    grads = client.parameter_gradients(model_id, x, torch.ones(3, dtype=F64), device="cuda")
    assert set(grads.gradients) == {n for n, _ in model.named_parameters()}


@pytest.fixture(scope="module")
def compiling_server(tmp_path_factory):
    from jacserve.server.app import serve
    from jacserve.server.config import ServerConfig

    running = serve(
        ServerConfig(
            port=0,
            metrics_port=None,
            model_dir=str(tmp_path_factory.mktemp("compiled")),
            compile="on",
            compile_after=2,
        )
    )
    yield running
    running.stop(grace=0)


# A TorchScript archive's switch to a compiled program is also seen, in forward mode, by
# tests/e2e/test_compile_workers.py, and reverse mode here by torch_export: that case is a
# second compile of tens of seconds, run with `pytest -m slow`.
@pytest.mark.parametrize(
    "fmt", ["torch_export", pytest.param("torchscript", marks=pytest.mark.slow)]
)
def test_the_server_switches_to_a_verified_compiled_program(compiling_server, fmt):
    model = MLP(6, 16, 5, F64)
    x = torch.randn(6, dtype=F64)
    with Client(compiling_server.target, timeout=300) as c:
        model_id = c.upload(archive_of(model, (x,), fmt))
        first = [c.jacobian(model_id, torch.randn(6, dtype=F64), mode="reverse") for _ in range(2)]
        assert [r.metrics.execution_path for r in first] == ["eager", "eager"]
        deadline = time.monotonic() + 300  # the worker compiles in the background
        while True:
            point = torch.randn(6, dtype=F64)
            later = c.jacobian(model_id, point, mode="reverse")
            settled = later.metrics.compilation.startswith(("ready", "failed", "slower"))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        torch.testing.assert_close(later.jacobian, torch.autograd.functional.jacobian(model, point))
        # "ready" means the program was verified against the eager Jacobian and was faster.
        assert later.metrics.compilation == "ready" or later.metrics.compilation.startswith(
            "slower"
        )
        expected_path = "compiled" if later.metrics.compilation == "ready" else "eager"
        assert later.metrics.execution_path == expected_path
