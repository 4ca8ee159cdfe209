"""A request computing alone uses every core the server may use; concurrent ones share.

The server's pool tells each request how many intra-op threads to use: the cores shared
among the requests computing at that moment (``metrics.threads`` reports it). Answers are
checked against ``torch.func`` whatever the thread count.
"""

from __future__ import annotations

import threading

import torch

from conftest import running_server
from jacserve.client import Client
from tests.models import MLP

F64 = torch.float64


def test_a_lone_request_uses_every_core_and_concurrent_ones_share():
    with running_server(workers=2, torch_threads=0) as server:
        cores = server.pool.settings.max_threads
        model = MLP(6, 32, 5, F64)
        x = torch.randn(6, dtype=F64)
        with Client(server.target, timeout=120) as client:
            model_id = client.upload(torch.export.export(model, (x,)))
            alone = client.jacobian(model_id, x)
            assert alone.metrics.threads == cores
            torch.testing.assert_close(alone.jacobian, torch.func.jacrev(model)(x))
            seen: list[int] = []

            def busy() -> None:
                for _ in range(40):
                    r = client.jacobian(model_id, x)
                    torch.testing.assert_close(r.jacobian, torch.func.jacrev(model)(x))
                    seen.append(r.metrics.threads)

            workers = [threading.Thread(target=busy) for _ in range(4)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        # with two requests computing at once each had half the cores (at least one)
        assert min(seen) == max(1, cores // 2)
        assert set(seen) <= {cores, max(1, cores // 2)}


def test_threads_set_by_hand_stay_fixed():
    with running_server(workers=2, torch_threads=1) as server:
        model = MLP(4, 8, 3, F64)
        x = torch.randn(4, dtype=F64)
        with Client(server.target, timeout=120) as client:
            result = client.jacobian(torch.export.export(model, (x,)), x)
        assert result.metrics.threads == 1
