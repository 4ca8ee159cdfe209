"""Worker processes: crashes, kills, CPU limits and the sandbox, each costing only the
request that caused it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, DeadlineExceeded, NotFound, ResourceExhausted, RetryPolicy
from jacserve.server.app import RunningServer
from jacserve.server.logs import JsonFormatter
from tests import hostile
from tests.models import Slow, archive_of

X = torch.randn(3)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = str(tmp_path_factory.mktemp("limited-models"))
    with running_server(folder, metrics_port=0, workers=2, worker_cpu_seconds=1.0) as running:
        yield running


def test_a_worker_killed_mid_request_costs_only_that_request(limited):
    with Client(limited.target, timeout=60) as client:
        looping = client.upload(hostile.infinite_loop())
        good = client.upload(hostile.good_script())
        client.jacobian(good, X)
        errors: list[Exception] = []

        def doomed() -> None:
            try:
                client.jvp(looping, X, X, timeout=30)
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=doomed)
        thread.start()
        time.sleep(0.5)
        victim = next(pid for pid in limited.pool.pids(looping) if _busy(pid))
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=30)
        assert len(errors) == 1 and isinstance(errors[0], ResourceExhausted)
        assert "SIGKILL" in str(errors[0])
        assert client.jacobian(good, X).jacobian.shape == (2, 3)  # its own worker serves
        assert victim not in limited.pool.pids()
        scrape = __import__("urllib.request").request.urlopen(
            f"http://127.0.0.1:{limited.metrics_port}/metrics", timeout=10
        )
        assert 'jacserve_worker_restarts_total{reason="crash"} 1.0' in scrape.read().decode()


def _wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there"
        time.sleep(0.02)


def _busy(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1].split()[0] == "R"


def test_cpu_time_limit_stops_a_runaway_request(limited):
    with Client(limited.target, timeout=60) as client:
        began = time.monotonic()
        with pytest.raises(ResourceExhausted) as info:
            client.jvp(hostile.infinite_loop(), X, X, timeout=30)
        assert "CPU seconds" in str(info.value), str(info.value)
        assert time.monotonic() - began < 10
        assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)


SANDBOX_PROBE = textwrap.dedent(
    """
    import json, os, socket, sys, tempfile
    import torch
    from jacserve.server.worker.sandbox import SandboxSettings, apply_sandbox
    scratch, secret = sys.argv[1], sys.argv[2]
    applied = apply_sandbox(SandboxSettings(memory_bytes=8 << 30, open_files=128, scratch_dir=scratch))
    found = {"applied": applied}
    for name, action in {
        "read_secret": lambda: open(secret).read(),
        "read_etc": lambda: open("/etc/passwd").read(),
        "write_tmp": lambda: open(os.path.join(os.path.dirname(secret), "new"), "w").write("x"),
        "write_scratch": lambda: open(os.path.join(scratch, "ok"), "w").write("x"),
        "inet_socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "unix_socket": lambda: socket.socketpair(),
        "torch_math": lambda: torch.ones(3).sum(),
    }.items():
        try:
            action()
            found[name] = "allowed"
        except OSError as exc:
            found[name] = f"denied: {exc.errno}"
    print(json.dumps(found))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox layers")
def test_sandbox_denies_files_and_network_but_allows_scratch_and_math(tmp_path):
    import json

    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SANDBOX_PROBE, str(scratch), str(secret)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        found["inet_socket"].startswith("denied") or "not restricted" in found["applied"]["network"]
    )
    assert found["unix_socket"] == "allowed" and found["torch_math"] == "allowed"
    assert found["write_scratch"] == "allowed"
    if "Landlock" in found["applied"]["files"]:
        assert found["read_secret"].startswith("denied")
        assert found["read_etc"].startswith("denied")
        assert found["write_tmp"].startswith("denied")


def test_a_full_queue_is_resource_exhausted_and_drains(tmp_path):
    with (
        running_server(str(tmp_path), workers=1, max_queue=1) as running,
        Client(running.target, timeout=60, retry=RetryPolicy.off()) as client,  # (QUEUE_FULL
    ):  # is retried by default: the refused call would wait its turn and succeed)
        slow = client.upload(archive_of(Slow(200_000), (X,), "torchscript"))  # seconds a call
        client.get_model(slow)  # its worker is loaded: the first call computes at once
        outcomes: list[object] = []

        def call() -> None:
            try:
                outcomes.append(client.jvp(slow, X, X).jvp)
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:  # one runs, one waits, one finds the queue full
            t.start()
            time.sleep(0.15)
        for t in threads:
            t.join(timeout=60)
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert len(refused) == 1 and isinstance(refused[0], ResourceExhausted)
        assert "already queued" in str(refused[0])
        assert client.jvp(slow, X, X).jvp.shape == (3,)


def test_logs_are_json_with_the_request_id_the_client_sees(limited, caplog):
    caplog.set_level(logging.INFO, logger="jacserve.server.rpc")
    with Client(limited.target, timeout=60) as client, pytest.raises(NotFound) as info:
        client.jacobian("b" * 64, X)
    request_id = info.value.request_id
    assert request_id
    records = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert records and records[0].code == "NOT_FOUND" and records[0].rpc == "StreamJacobian"
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == request_id and line["message"] == "rpc finished"


def test_a_model_whose_requests_keep_overrunning_stops_costing_workers(limited):
    with Client(limited.target, timeout=60) as client:
        slow = client.upload(archive_of(Slow(50_000_000), (X,), "torchscript"))
        for _ in range(2):  # each overrun kills the model's worker
            with pytest.raises(DeadlineExceeded):
                client.jvp(slow, X, X, timeout=1.0)
            _wait_until(lambda: limited.pool.pids(slow) == [])  # the server stopped it too
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="was not started"):
            client.jvp(slow, X, X, timeout=0.5)
        assert time.monotonic() - began < 0.5
        assert limited.pool.pids(slow) == []  # no worker was forked or loaded for it
        assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)


def test_a_callers_deadline_wins_over_the_servers_default(tmp_path):
    with (
        running_server(str(tmp_path), workers=1, request_timeout=0.5) as running,
        Client(running.target, timeout=120) as client,
    ):
        slow = client.upload(archive_of(Slow(300_000), (X,), "torchscript"))
        client.get_model(slow)  # its worker is loaded: the call's time is all computing
        result = client.jvp(slow, X, X)  # runs for seconds, past --request-timeout
        torch.testing.assert_close(result.jvp, 2 * X)
        assert result.metrics.timing["total"] > 0.5
