"""A long request computing alone uses every core the server may use; short ones and
concurrent ones keep one share.

The pool offers each request the cores shared among the requests computing at that
moment; the worker takes them for a kind of request whose last run was long enough to
gain from them (``metrics.threads`` reports what it used). Answers are checked against
``torch.func`` whatever the thread count.
"""

from __future__ import annotations

import threading

import torch

from conftest import running_server
from jacserve.client import Client
from tests.models import MLP

F64 = torch.float64


def test_a_long_request_alone_uses_every_core_and_concurrent_ones_share():
    with running_server(workers=2) as server:
        settings = server.pool.settings
        cores, base = settings.max_threads, settings.torch_threads
        model = MLP(800, 800, 800, F64)  # an 800 × 800 Jacobian: ~70 ms on one thread here
        x = torch.randn(800, dtype=F64)
        want = torch.func.jacrev(model)(x)
        with Client(server.target, timeout=300) as client:
            model_id = client.upload(torch.export.export(model, (x,)))
            first = client.jacobian(model_id, x, mode="reverse")
            assert first.metrics.threads == base  # nothing known of this kind yet
            alone = [client.jacobian(model_id, x, mode="reverse") for _ in range(4)]
            assert alone[-1].metrics.threads == cores  # known to be long by now
            torch.testing.assert_close(alone[-1].jacobian, want)
            seen: list[int] = []

            def busy() -> None:
                for _ in range(6):
                    r = client.jacobian(model_id, x, mode="reverse")
                    torch.testing.assert_close(r.jacobian, want)
                    seen.append(r.metrics.threads)

            callers = [threading.Thread(target=busy) for _ in range(4)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
        assert set(seen) <= {base, cores, max(base, cores // 2)}
        assert min(seen) == max(base, cores // 2)  # two computing at once: a share each


def test_short_requests_keep_one_thread():
    with running_server(workers=2) as server:
        model = MLP(4, 8, 3, F64)
        x = torch.randn(4, dtype=F64)
        with Client(server.target, timeout=120) as client:
            model_id = client.upload(torch.export.export(model, (x,)))
            threads = {client.jvp(model_id, x, x).metrics.threads for _ in range(20)}
        assert threads == {server.pool.settings.torch_threads}


def test_threads_set_by_hand_stay_fixed():
    with running_server(workers=2, torch_threads=1) as server:
        model = MLP(300, 300, 300, F64)
        x = torch.randn(300, dtype=F64)
        with Client(server.target, timeout=120) as client:
            model_id = client.upload(torch.export.export(model, (x,)))
            threads = {client.jacobian(model_id, x).metrics.threads for _ in range(3)}
        assert threads == {1}
