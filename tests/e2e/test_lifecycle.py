"""Start-up, shutdown and restart: health says SERVING only once the workers are up,
in-flight requests finish on SIGTERM, and a client that retries rides through a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jacserve.client import Client
from jacserve.client.errors import JacserveError, Unavailable
from tests.models import Slow, archive_of

X = torch.randn(3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, model_dir: str, grace: float = 10.0) -> subprocess.Popen[str]:
    env = {**os.environ, "JACSERVE_METRICS_PORT": "off", "JACSERVE_GRACE_SECONDS": str(grace),
           "JACSERVE_WORKERS": "2", "JACSERVE_COMPILE": "off"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "jacserve.server", "--port", str(port), "--model-dir", model_dir],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _with_retries(call, seconds: float = 60.0):
    """Retry ``call`` while the server is unavailable (what the SDK's retries will do)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(tmp_path):
    port = _free_port()
    process = _start(port, str(tmp_path))
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            model_id = _with_retries(
                lambda: client.upload(archive_of(Slow(400_000), (X,), "torchscript"))
            )
            began = time.monotonic()
            client.jvp(model_id, X, X)
            single = time.monotonic() - began
            assert single > 0.3, "the model must be slow enough to be in flight at SIGTERM"
            results: list[object] = []
            threads = [
                threading.Thread(target=lambda: results.append(_call(client, model_id)))
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            time.sleep(min(0.3, single / 3))  # both are running in the workers now
            process.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(timeout=60)
            assert len(results) == 2 and all(not isinstance(r, Exception) for r in results), results
            for r in results:
                torch.testing.assert_close(r.jvp, 2 * X)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()


def _call(client: Client, model_id: str):
    try:
        return client.jvp(model_id, X, X)
    except JacserveError as exc:
        return exc


def test_a_retrying_client_rides_through_a_restart(tmp_path):
    port = _free_port()
    process = _start(port, str(tmp_path), grace=1)
    answered = 0
    try:
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            model_id = _with_retries(
                lambda: client.upload(archive_of(Slow(10), (X,), "torchscript"))
            )
            for i in range(60):
                if i == 20:
                    process.send_signal(signal.SIGTERM)
                    assert process.wait(timeout=60) == 0
                    process = _start(port, str(tmp_path), grace=1)  # same port, same models
                result = _with_retries(lambda: client.jvp(model_id, X, X))
                torch.testing.assert_close(result.jvp, 2 * X)
                answered += 1
        assert answered == 60
    finally:
        process.kill()


def test_health_is_not_serving_until_the_workers_are_up(tmp_path):
    port = _free_port()
    process = _start(port, str(tmp_path))
    seen: list[str] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while not seen or seen[-1] != "SERVING":
                assert time.monotonic() < deadline and process.poll() is None
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                except grpc.RpcError:
                    time.sleep(0.01)  # not listening yet
        assert seen[0] == "NOT_SERVING", seen[:3]  # listening, workers still starting
        with Client(f"127.0.0.1:{port}", timeout=60) as client:  # SERVING: workers answer
            began = time.monotonic()
            assert client.jvp(archive_of(Slow(1), (X,), "torchscript"), X, X).jvp.shape == (3,)
            assert time.monotonic() - began < 10
    finally:
        process.kill()
