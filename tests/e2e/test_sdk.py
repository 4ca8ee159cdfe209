"""The sync and async clients on the same scenarios, retries, and models from Python
objects."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import torch
from torch.func import jacrev

from jacserve.client import (
    AsyncClient,
    Client,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
)
from tests.models import MLP, SinExp, archive_of

F64 = torch.float64
X = torch.randn(3, dtype=F64)


class _Sync:
    """Runs a client method the sync way."""

    def __init__(self, target: str, **options: Any) -> None:
        self.client = Client(target, timeout=60, **options)

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.client, name)(*args, **kwargs)

    def close(self) -> None:
        self.client.close()


class _Async:
    """Runs a client method on an AsyncClient in an event loop of its own."""

    def __init__(self, target: str, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(self._make(target, options))

    @staticmethod
    async def _make(target: str, options: dict[str, Any]) -> AsyncClient:
        return AsyncClient(target, timeout=60, **options)

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.loop.run_until_complete(getattr(self.client, name)(*args, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def call(request, server) -> Any:
    runner = (_Sync if request.param == "sync" else _Async)(server.target)
    yield runner
    runner.close()


def test_the_four_derivatives_match_torch_func(call):
    model = MLP(3, 5, 2, F64)
    model_id = call("upload", archive_of(model, (X,), "torchscript"))
    v, u = torch.randn(3, dtype=F64), torch.randn(2, dtype=F64)
    jacobian = jacrev(model)(X)
    torch.testing.assert_close(call("jacobian", model_id, X).jacobian, jacobian)
    torch.testing.assert_close(call("jvp", model_id, X, v).jvp, jacobian @ v)
    torch.testing.assert_close(call("vjp", model_id, X, u).vjp, u @ jacobian)
    gradients = call("parameter_gradients", model_id, X, u).gradients
    model.zero_grad()
    (model(X) * u).sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(gradients[name], parameter.grad)


def test_model_management_and_errors(call):
    model_id = call("upload", archive_of(SinExp(), (X,), "torch_export"))
    assert call("get_model", model_id).format == "torch_export"
    assert model_id in [m.model_id for m in call("list_models")]
    call("delete_model", model_id)
    with pytest.raises(NotFound) as info:
        call("get_model", model_id)
    assert info.value.request_id and info.value.code.name == "NOT_FOUND"
    with pytest.raises(InvalidArgument, match="not a zip"):
        call("upload", b"junk")


def test_plain_modules_and_functions_are_exported_once(call, server):
    model = MLP(3, 4, 2, F64)
    first = call("jacobian", model, X)
    torch.testing.assert_close(first.jacobian, jacrev(model)(X))
    model_ids = {m.model_id for m in call("list_models")}
    again = call("jacobian", model, torch.randn(3, dtype=F64))  # same code, weights, shapes
    assert again.jacobian.shape == (2, 3)
    assert {m.model_id for m in call("list_models")} == model_ids  # nothing new uploaded

    def cubic(x: torch.Tensor) -> torch.Tensor:
        return x**3

    torch.testing.assert_close(call("jvp", cubic, X, torch.ones(3, dtype=F64)).jvp, 3 * X**2)


def test_a_module_that_cannot_be_serialized_names_every_failure(call):
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * len(str(x.tolist()))

    def stringify(x: torch.Tensor) -> str:
        return str(x)

    with pytest.raises(
        ValueError, match=r"torch.export.export: .*torch.jit.script: .*torch.jit.trace"
    ):
        call("upload", stringify, example_inputs=(X,))
    with pytest.raises(TypeError, match="example_inputs"):
        call("upload", DataDependent())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, model_dir: str) -> subprocess.Popen[str]:
    env = {**os.environ, "JACSERVE_METRICS_PORT": "off", "JACSERVE_WORKERS": "1",
           "JACSERVE_COMPILE": "off", "JACSERVE_GRACE_SECONDS": "1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "jacserve.server", "--port", str(port), "--model-dir", model_dir],
        env=env, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_retries_ride_through_a_stopped_and_restarted_server(tmp_path, kind):
    port = _free_port()
    process = _start(port, str(tmp_path))
    patient = RetryPolicy(max_attempts=200, initial_backoff=0.05, max_backoff=0.25)
    runner = (_Sync if kind == "sync" else _Async)(f"127.0.0.1:{port}", retry=patient)
    impatient = (_Sync if kind == "sync" else _Async)(f"127.0.0.1:{port}", retry=RetryPolicy.off())
    try:
        model_id = runner("upload", archive_of(SinExp(), (X,), "torchscript"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        with pytest.raises(Unavailable):
            impatient("list_models")
        restarter = threading.Timer(1.0, lambda: processes.append(_start(port, str(tmp_path))))
        processes: list[subprocess.Popen[str]] = []
        restarter.start()
        began = time.monotonic()
        result = runner("jacobian", model_id, X)  # the server is down for ≥ 1 s of this
        assert time.monotonic() - began >= 0.9
        torch.testing.assert_close(result.jacobian, jacrev(SinExp())(X))
    finally:
        runner.close()
        impatient.close()
        process.kill()
        for p in locals().get("processes", []):
            p.kill()


def test_retry_policy_backoff_grows_and_is_capped():
    policy = RetryPolicy(initial_backoff=0.1, multiplier=3, max_backoff=1.0, jitter=0.5)
    waits = [policy.backoff(a) for a in range(6) for _ in range(20)]
    assert min(waits) >= 0.05 and max(waits) <= 1.5
    assert not policy.should_retry(InvalidArgument("x", reason="INVALID_TENSOR"), 0)
    assert not RetryPolicy.off().should_retry(Unavailable("x"), 0)
    assert policy.should_retry(ResourceExhausted("x", reason="QUEUE_FULL"), 0)
    assert not policy.should_retry(ResourceExhausted("x", reason="ARCHIVE_TOO_LARGE"), 0)
    assert not policy.should_retry(ResourceExhausted("x", reason="MESSAGE_TOO_LARGE"), 0)
    # without details: gRPC's --max-concurrent-rpcs refusal (the SDK labels size refusals)
    assert policy.should_retry(ResourceExhausted("3 requests are already queued"), 0)
