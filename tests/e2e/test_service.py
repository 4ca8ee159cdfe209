"""Model management, health, reflection, Prometheus and the `jacserve serve` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jacserve.client import Client, NotFound
from tests.models import MLP, archive_of


def test_upload_get_list_and_delete(client: Client):
    x = torch.zeros(3, dtype=torch.float64)
    data = archive_of(MLP(3, 5, 2, torch.float64), (x,), "torch_export")
    model_id = client.upload(data)
    info = client.get_model(model_id)
    assert info.format == "torch_export" and info.archive_size_bytes == len(data)
    assert (
        info.methods[0].inputs[0].shape == (3,) and info.methods[0].inputs[0].dtype == torch.float64
    )
    assert [p.shape for p in info.parameters] == [(5, 3), (5,), (2, 5), (2,)]
    assert model_id in [m.model_id for m in client.list_models()]
    client.delete_model(model_id)
    with pytest.raises(NotFound):
        client.get_model(model_id)
    assert client.jacobian(data, x).jacobian.shape == (2, 3)  # bytes re-upload transparently


def test_archives_larger_than_one_chunk_upload_in_pieces(server):
    model = MLP(512, 1024, 8, torch.float32)  # ~2.1 MB of weights, three 1 MiB chunks
    x = torch.randn(512)
    data = archive_of(model, (x,), "torchscript")
    assert len(data) > 2 << 20
    with Client(server.target, timeout=60) as c:
        result = c.vjp(c.upload(data), x, torch.ones(8))
    torch.testing.assert_close(
        result.vjp, torch.autograd.functional.vjp(model, x, torch.ones(8))[1]
    )


def test_sdk_explains_unsupported_model_objects(client: Client):
    with pytest.raises(TypeError, match="needs example_inputs"):
        client.upload(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="got int"):
        client.upload(42)


def test_health_reports_serving(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jacserve.v1.JacobianService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"jacserve.v1.JacobianService", "grpc.health.v1.Health"} <= names


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_prometheus_endpoint_counts_requests_by_method_mode_and_code(server, client: Client):
    x = torch.randn(2, dtype=torch.float64)
    model_id = client.upload(archive_of(MLP(2, 3, 6, torch.float64), (x,), "torchscript"))
    key = 'jacserve_requests_total{code="OK",method="StreamJacobian",mode="forward"}'
    before = _scrape(server.metrics_port).get(key, 0.0)
    client.jacobian(model_id, x, mode="forward")
    with pytest.raises(NotFound):
        client.jacobian("e" * 64, x)
    after = _scrape(server.metrics_port)
    assert after[key] == before + 1
    assert (
        after['jacserve_requests_total{code="NOT_FOUND",method="StreamJacobian",mode="none"}'] >= 1
    )
    assert after['jacserve_derivative_passes_total{method="StreamJacobian",mode="forward"}'] >= 2
    assert (
        after["jacserve_models_registered"] >= 1 and after["jacserve_workers"] == server.pool.size
    )
    assert after['jacserve_model_cache_lookups_total{result="hit"}'] >= 1
    assert after["jacserve_queue_wait_seconds_count"] >= 2
    assert after["jacserve_requests_in_flight"] == 0 and after["jacserve_workers_busy"] == 0
    assert 'jacserve_request_duration_seconds_count{method="StreamJacobian"}' in after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jacserve_serve_command_serves_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    env = {**os.environ, "JACSERVE_METRICS_PORT": "off", "JACSERVE_GRACE_SECONDS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jacserve.server",
            "--port",
            str(port),
            "--model-dir",
            str(tmp_path),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert c.list_models() == []
                    break
                except Exception:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.2)
            x = torch.randn(3, dtype=torch.float64)
            assert c.jacobian(
                archive_of(MLP(3, 4, 2, torch.float64), (x,), "torchscript"), x
            ).jacobian.shape == (2, 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "received SIGTERM" in process.stderr.read()
        assert len(list(tmp_path.glob("*.archive"))) == 1  # --model-dir keeps uploads
    finally:
        process.kill()
