"""Compilation happens in compile workers, never on the request path.

A real server with ``--compile on`` builds programs in a separate confined process while
its serving workers go on answering eagerly; the compile worker is then promoted and
serves compiled; a compile past ``--compile-timeout`` is stopped without touching any
request; serving workers cannot fork, only compile workers can. Every answer is checked
against ``torch.autograd.functional.jacobian``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from conftest import running_server
from jacserve.client import Client
from tests.models import MLP

F64 = torch.float64
SETTLED = ("ready", "slower", "failed")
PAUSE = 0.05  # between requests: the compile worker runs at the lowest priority


def _compilations(port: int) -> dict[str, float]:
    """``jacserve_compilations_total`` by outcome, and the compile-seconds count."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("jacserve_compilations_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("jacserve_compile_seconds_count"):
            found["count"] = float(line.rsplit(" ", 1)[1])
    return found


def _seccomp_filters(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp_filters:"):
            return int(line.split()[1])
    return -1


@pytest.fixture(scope="module")
def compiling() -> Iterator[tuple[Client, object]]:
    with (
        running_server(workers=1, compile="on", compile_after=1, metrics_port=0) as server,
        Client(server.target, timeout=300) as client,
    ):
        yield client, server


def _check(result, model: torch.nn.Module, point: torch.Tensor) -> None:
    want = torch.autograd.functional.jacobian(model, point)
    torch.testing.assert_close(result.jacobian, want, rtol=1e-10, atol=1e-12)


@dataclass(frozen=True)
class Compiled:
    """What the module's one compile looked like, seen from outside: the model, its first
    (eager) answer and serving worker, the answers given while it compiled, the settled
    answer and the worker that serves after it."""

    model: torch.nn.Module
    model_id: str
    point: torch.Tensor
    first: object
    serving_pid: int
    serving_filters: int
    answered_while_compiling: int
    settled: object
    settled_point: torch.Tensor
    promoted_pids: list[int]
    promoted_filters: int


@pytest.fixture(scope="module")
def compiled(compiling) -> Compiled:
    """One program compiled for the module's tests (a compile takes tens of seconds on two
    cores): a TorchScript MLP in forward mode, while another model's requests and its own
    go on being answered; every answer is checked as it comes. (Exported models and
    reverse mode are compiled in tests/e2e/test_performance_features.py.)"""
    client, server = compiling
    model, other = MLP(6, 16, 5, F64), MLP(4, 8, 3, F64)
    model_id = client.upload(torch.jit.script(model))
    other_id = client.upload(torch.export.export(other, (torch.zeros(4, dtype=F64),)))
    point = torch.randn(6, dtype=F64)
    first = client.jacobian(model_id, point, mode="forward")  # asks for a program
    _check(first, model, point)
    (serving_pid,) = server.pool.pids(model_id)
    serving_filters = _seccomp_filters(serving_pid)
    answered_while_compiling = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        settled_point = torch.randn(6, dtype=F64)
        result = client.jacobian(model_id, settled_point, mode="forward")
        _check(result, model, settled_point)
        x = torch.randn(4, dtype=F64)
        torch.testing.assert_close(
            client.jvp(other_id, x, torch.ones(4, dtype=F64)).jvp,
            torch.func.jvp(other, (x,), (torch.ones(4, dtype=F64),))[1],
        )
        if result.metrics.compilation.startswith(SETTLED):
            break
        assert result.metrics.compilation.startswith("requested")
        answered_while_compiling += 1
        time.sleep(PAUSE)
    else:
        raise AssertionError("compilation did not settle in 5 minutes")
    promoted_pids = server.pool.pids(model_id)
    return Compiled(
        model=model,
        model_id=model_id,
        point=point,
        first=first,
        serving_pid=serving_pid,
        serving_filters=serving_filters,
        answered_while_compiling=answered_while_compiling,
        settled=result,
        settled_point=settled_point,
        promoted_pids=promoted_pids,
        promoted_filters=_seccomp_filters(promoted_pids[0]) if promoted_pids else -1,
    )


def test_requests_are_answered_while_a_program_compiles(compiling, compiled):
    _, server = compiling
    assert compiled.first.metrics.execution_path == "eager"
    # A compile takes seconds and a request milliseconds: had requests waited for the
    # compile (the old in-worker compiler held the model lock), only one or two would
    # have been answered before it settled.
    assert compiled.answered_while_compiling >= 10, compiled.answered_while_compiling
    result = compiled.settled
    assert result.metrics.compilation == "ready" or result.metrics.compilation.startswith("slower")
    expected_path = "compiled" if result.metrics.compilation == "ready" else "eager"
    assert result.metrics.execution_path == expected_path
    # the compile worker now serves the archive; the eager worker that asked is gone
    assert compiled.promoted_pids != [compiled.serving_pid]
    counts = _compilations(server.metrics_port)
    assert counts.get("count", 0) >= 1
    assert counts.get("ready", 0) + counts.get("slower", 0) >= 1


def test_only_a_compile_worker_may_fork_and_it_stops_before_serving(compiled):
    assert compiled.serving_filters == 1  # one filter, built without fork or exec
    (promoted,) = compiled.promoted_pids
    assert promoted != compiled.serving_pid
    # its own filter (fork allowed, to run the compiler), then the serving one stacked
    assert compiled.promoted_filters == 2
    _check(compiled.settled, compiled.model, compiled.settled_point)


def test_a_killed_compiled_worker_is_rebuilt_from_the_archives_cache(compiling, compiled):
    client, server = compiling
    model, model_id, point = compiled.model, compiled.model_id, compiled.point

    def until_settled() -> object:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            result = client.jacobian(model_id, point, mode="forward")
            _check(result, model, point)
            if result.metrics.compilation.startswith(SETTLED):
                return result
            time.sleep(PAUSE)
        raise AssertionError("compilation did not settle in 5 minutes")

    until_settled()
    cache = os.path.join(server.pool.settings.scratch_dir, f"compile-{model_id}", "inductor")
    assert os.listdir(cache), "the compile worker left no cache"
    before = _compilations(server.metrics_port).get("count", 0)
    for pid in server.pool.pids(model_id):
        os.kill(pid, signal.SIGKILL)
        while os.path.exists(f"/proc/{pid}"):  # reaped by the zygote, which tells the pool
            time.sleep(0.05)
    time.sleep(0.5)
    result = until_settled()  # a fresh eager worker asks again; its compile worker reuses
    assert _compilations(server.metrics_port)["count"] > before
    assert result.metrics.execution_path in ("compiled", "eager")


def test_a_compile_past_its_timeout_is_stopped_and_never_retried():
    model = MLP(4, 8, 3, F64)
    with (
        running_server(
            workers=1, compile="on", compile_after=1, compile_timeout=0.2, metrics_port=0
        ) as server,
        Client(server.target, timeout=60) as client,
    ):
        model_id = client.upload(torch.export.export(model, (torch.zeros(4, dtype=F64),)))
        deadline = time.monotonic() + 120
        while _compilations(server.metrics_port).get("timeout", 0) < 1:
            assert time.monotonic() < deadline, "the compile was not stopped"
            point = torch.randn(4, dtype=F64)
            _check(client.jacobian(model_id, point, mode="reverse"), model, point)
        for _ in range(20):  # requests go on, eagerly, and nothing is compiled again
            point = torch.randn(4, dtype=F64)
            result = client.jacobian(model_id, point, mode="reverse")
            _check(result, model, point)
            assert result.metrics.execution_path == "eager"
        # the serving worker that asked says how its compile ended
        assert result.metrics.compilation == "failed: the compile worker ended: timeout"
        assert _compilations(server.metrics_port) == {"timeout": 1.0, "count": 1.0}
