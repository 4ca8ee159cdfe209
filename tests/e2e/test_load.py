"""A bounded load test: 16 clients × 200 mixed requests, every answer checked, no errors,
and memory that stops growing."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
import torch
from torch.func import jacrev, vjp

from conftest import running_server
from jacserve.client import Client
from jacserve.server.app import RunningServer
from tests.models import MLP, archive_of

CLIENTS, REQUESTS = 16, 200
F64 = torch.float64


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = str(tmp_path_factory.mktemp("load-models"))
    with running_server(folder, workers=2, log_level="WARNING") as running:
        yield running


def _one_client(target: str, ids: dict[str, str], models: dict[str, MLP], seed: int,
                failures: list[str]) -> None:  # fmt: skip
    rng = random.Random(seed)
    with Client(target, timeout=60) as client:
        for _ in range(REQUESTS):
            fmt = rng.choice(list(ids))
            model, model_id = models[fmt], ids[fmt]
            x, v = torch.randn(4, dtype=F64), torch.randn(4, dtype=F64)
            kind = rng.choice(["jvp", "vjp", "jacobian", "gradients"])
            try:
                if kind == "jvp":
                    # reverse-mode reference: forward AD is process-global, not thread-safe
                    got, want = client.jvp(model_id, x, v).jvp, jacrev(model)(x) @ v
                elif kind == "vjp":
                    u = torch.randn(3, dtype=F64)
                    got, want = client.vjp(model_id, x, u).vjp, vjp(model, x)[1](u)[0]
                elif kind == "jacobian":
                    got, want = client.jacobian(model_id, x).jacobian, jacrev(model)(x)
                else:
                    u = torch.randn(3, dtype=F64)
                    result = client.parameter_gradients(model_id, x, u)
                    model.zero_grad()
                    (model(x) * u).sum().backward()
                    name = next(iter(result.gradients))
                    got = result.gradients[name]
                    want = dict(model.named_parameters())[name].grad
                torch.testing.assert_close(got, want)
            except Exception as exc:
                failures.append(f"{kind} on {fmt}: {type(exc).__name__}: {exc}")


def _round(server: RunningServer, ids, seed: int) -> list[str]:
    failures: list[str] = []
    threads = [
        threading.Thread(
            target=_one_client,
            args=(server.target, ids, {f: MLP(4, 8, 3, F64) for f in ids}, seed + i, failures),
        )
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return failures


def test_sixteen_clients_get_correct_answers_and_memory_stops_growing(loaded):
    x = torch.randn(4, dtype=F64)
    with Client(loaded.target, timeout=60) as client:
        ids = {fmt: client.upload(archive_of(MLP(4, 8, 3, F64), (x,), fmt))
               for fmt in ("torchscript", "torch_export")}  # fmt: skip
    assert _round(loaded, ids, seed=0) == []  # warm-up: 3,200 requests
    pids = [None, *loaded.pool.pids()]  # None: this process (the frontend and the clients)
    before = {p: _rss_bytes(p or __import__("os").getpid()) for p in pids}
    assert _round(loaded, ids, seed=100) == []  # 3,200 more
    after = {p: _rss_bytes(p or __import__("os").getpid()) for p in pids}
    assert loaded.pool.pids() == pids[1:], "a worker was restarted under load"
    for pid in pids:
        growth = after[pid] - before[pid]
        assert growth < 32 << 20, f"process {pid or 'frontend'} grew {growth >> 20} MiB"
