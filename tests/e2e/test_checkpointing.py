"""Reverse mode within a memory budget (issue #15, item 4), over a real server.

A deep model whose reverse tape is about four times the budget gets its Jacobian by
checkpointed reverse mode: the same numbers as unbudgeted reverse (and torch.func), a
measured peak under the budget, and the segments and recomputation reported. Where
forward mode needs few passes auto mode takes it instead (no tape at all); a budget
nothing can meet is refused with BUDGET_TOO_SMALL. The server measures peak memory by
live tensors (``--memory-meter tensors``), so the peak is the tensors' own, not RSS.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, ResourceExhausted
from jacserve.server.engine.checkpointed import GraphSegments


class Deep(torch.nn.Module):
    """``depth`` tanh layers of ``width`` over a batch of rows, summed to ``m`` outputs."""

    def __init__(self, width: int = 128, depth: int = 16, m: int = 6) -> None:
        super().__init__()
        torch.manual_seed(depth)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.head = torch.nn.Linear(width, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).sum(0)


MODEL = Deep(width=32, depth=128).double()  # a deep, narrow network: its tape dominates
X = torch.randn(16, 32, dtype=torch.float64)
RESULT_BYTES = 6 * X.numel() * 8 + 2 * X.numel() * 8  # the Jacobian, outputs and inputs
EXPORTED = torch.export.export(MODEL, (X,))


def _tape_bytes() -> int:
    return GraphSegments(EXPORTED.module(), 1).profile([X], (0,)).tape_bytes


def _scripted() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(MODEL), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def budgeted() -> Iterator[Client]:
    with (
        running_server(workers=1, memory_meter="tensors") as server,
        Client(server.target, timeout=300) as client,
    ):
        yield client


@pytest.mark.parametrize("archive", ["export", "torchscript"])
def test_a_tape_four_times_the_budget_runs_checkpointed_under_the_budget(budgeted, archive):
    tape = _tape_bytes()
    budget = tape // 4 + RESULT_BYTES  # the tape is about four times what it may take
    model = EXPORTED if archive == "export" else _scripted()
    plain = budgeted.jacobian(model, X, mode="reverse")
    assert plain.metrics.checkpoint_segments == 0
    for _ in range(2):  # the first call measures and checks, the second reuses the plan
        r = budgeted.jacobian(model, X, max_memory_bytes=budget)
        assert r.metrics.mode == "reverse" and r.metrics.checkpoint_segments >= 2
        assert "checkpointed reverse" in r.metrics.mode_reason
        assert r.metrics.recompute_seconds > 0
        assert 0 < r.metrics.peak_memory_bytes <= budget
        torch.testing.assert_close(r.jacobian, plain.jacobian, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.jacobian, torch.func.jacrev(MODEL)(X), rtol=1e-10, atol=1e-12)
    assert plain.metrics.peak_memory_bytes > budget  # the tape alone would not have fitted


def test_auto_takes_forward_mode_when_it_needs_few_passes(budgeted):
    square = Deep(width=16, depth=128, m=16).double()
    x = torch.randn(1, 16, dtype=torch.float64)  # n = 16 inputs, m = 16 outputs
    exported = torch.export.export(square, (x,))
    tape = GraphSegments(exported.module(), 1).profile([x], (0,)).tape_bytes
    r = budgeted.jacobian(exported, x, max_memory_bytes=tape // 2 + 4096)
    assert r.metrics.mode == "forward" and "keeps no tape" in r.metrics.mode_reason
    assert r.metrics.checkpoint_segments == 0
    torch.testing.assert_close(r.jacobian, torch.func.jacrev(square)(x), rtol=1e-10, atol=1e-12)


def test_forced_reverse_is_checkpointed_too(budgeted):
    budget = _tape_bytes() // 3 + RESULT_BYTES
    r = budgeted.jacobian(EXPORTED, X, mode="reverse", max_memory_bytes=budget)
    assert r.metrics.checkpoint_segments >= 2 and r.metrics.peak_memory_bytes <= budget


def test_a_budget_nothing_meets_is_refused(budgeted):
    with pytest.raises(ResourceExhausted) as refused:
        budgeted.jacobian(EXPORTED, X, mode="reverse", max_memory_bytes=RESULT_BYTES)
    assert refused.value.reason == "BUDGET_TOO_SMALL"
    assert "max_memory_bytes" in refused.value.message
