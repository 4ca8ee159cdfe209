"""Every combination of mode, memory budget, chunking, batching and pass windows completes
with the right Jacobian (no self-deadlock: forward mode with a budget once waited on a
lock it already held until the caller's deadline).

Each call runs in a thread with a watchdog, so a deadlock fails the test instead of
hanging the suite; nothing is asserted about time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import jacrev, vmap

from jacserve.server import engine
from jacserve.server.errors import ResourceExhausted
from tests.models import MLP, TwoInTwoOut

F64 = torch.float64
WATCHDOG_SECONDS = 120


def _completes(call: Callable[[], Any]) -> Any:
    """``call()``'s result; fails if it has not returned after the watchdog's time."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # handed to the test
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WATCHDOG_SECONDS)
    assert not thread.is_alive(), "the call never returned (a deadlock?)"
    if failure:
        raise failure[0]
    return result[0]


MODES = ["forward", "reverse", "auto"]
BUDGETS = [None, 10**8, 400_000]  # none, ample, and tight (chunks, or a clear refusal)
CHUNKS = [None, 1, 3]


@pytest.mark.parametrize(
    ("mode", "budget", "chunk", "batched"),
    list(itertools.product(MODES, BUDGETS, CHUNKS, [False, True])),
)
def test_every_combination_completes_with_the_right_jacobian(mode, budget, chunk, batched):
    model = MLP(12, 512, 10, F64)
    cache = engine.DerivativeCache()
    x = torch.randn(3, 12, dtype=F64) if batched else torch.randn(12, dtype=F64)
    for _ in range(2):  # the second call uses what the first one measured and cached
        try:
            result = _completes(
                lambda: engine.jacobian(
                    model, [x], mode=mode, batched=batched, chunk_size=chunk,
                    max_memory_bytes=budget, cache=cache,
                )
            )  # fmt: skip
        except ResourceExhausted as refusal:  # the tight budget may not fit one pass
            assert budget == BUDGETS[-1] and "budget" in str(refusal)
            return
        want = vmap(jacrev(model))(x) if batched else jacrev(model)(x)
        torch.testing.assert_close(result.values[0], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("mode", "budget", "chunk", "window"),
    list(itertools.product(["forward", "reverse"], BUDGETS, CHUNKS, [(0, 2), (1, 3)])),
)
def test_every_window_of_passes_completes(mode, budget, chunk, window):
    x, y = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    model = TwoInTwoOut()
    result = _completes(
        lambda: engine.jacobian(
            model, [x, y], mode=mode, chunk_size=chunk, max_memory_bytes=budget,
            passes=window, cache=engine.DerivativeCache(),
        )
    )  # fmt: skip
    full = torch.cat(
        [torch.cat([b.reshape(b.shape[0] if b.dim() else 1, -1) for b in row], dim=1)
         for row in jacrev(lambda a, b: tuple(o.reshape(-1) for o in model(a, b)),
                           argnums=(0, 1))(x, y)]
    )  # fmt: skip
    rows = full if mode == "reverse" else full.T
    torch.testing.assert_close(result.values[0], rows[window[0] : window[1]])


@pytest.mark.parametrize(
    ("kind", "batched"), list(itertools.product(["jvp", "vjp"], [False, True]))
)
def test_products_complete_one_vector_or_a_batch(kind, batched):
    model = MLP(4, 8, 3, F64)
    x = torch.randn(4, dtype=F64)
    size = 4 if kind == "jvp" else 3
    vector = torch.randn(2, size, dtype=F64) if batched else torch.randn(size, dtype=F64)
    result = _completes(lambda: getattr(engine, kind)(model, [x], [vector], batched=batched))
    if kind == "jvp":
        single = lambda v: torch.func.jvp(model, (x,), (v,))[1]  # noqa: E731
    else:
        single = lambda v: torch.func.vjp(model, x)[1](v)[0]  # noqa: E731
    want = vmap(single)(vector) if batched else single(vector)
    torch.testing.assert_close(result.values[0], want)
