"""Checkpointed reverse mode in the engine: any cut of a graph gives torch.func's Jacobian,
and the planned cut keeps the measured peak under the budget.

Graphs with skip connections (values read by segments far after the one that made them),
several outputs, integer inputs and unused inputs; every cut from one segment to one node
per segment, and chunks of rows from one to all, in one backward sweep or one per chunk.
"""

from __future__ import annotations

import pytest
import torch

from jacserve.server import engine
from jacserve.server.engine._measure import LiveTensorMeter
from jacserve.server.engine.cache import DerivativeCache
from jacserve.server.engine.checkpointed import GraphSegments, SegmentPlan
from jacserve.server.errors import ResourceExhausted

F64 = torch.float64


class Residual(torch.nn.Module):
    """Skip connections across blocks, two outputs, an integer input used as an index."""

    def __init__(self, width: int = 12, blocks: int = 6) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(blocks))

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, unused: torch.Tensor
    ):
        first = x
        for block in self.blocks:
            x = x + torch.sin(block(x)) * scale
        return (x * first).sum(0)[index], torch.tanh(x).mean()


def _inputs() -> list[torch.Tensor]:
    torch.manual_seed(2)
    return [
        torch.randn(5, 12, dtype=F64),
        torch.tensor(0.7, dtype=F64),
        torch.tensor([3, 1, 4]),
        torch.randn(2, dtype=F64),
    ]


def _expected(model: torch.nn.Module, inputs: list[torch.Tensor], wrt: tuple[int, ...]):
    def at(*values):
        args = list(inputs)
        for j, v in zip(wrt, values, strict=True):
            args[j] = v
        return model(*args)

    return torch.func.jacrev(at, argnums=tuple(range(len(wrt))))(*[inputs[j] for j in wrt])


@pytest.mark.parametrize("wrt", [(0,), (0, 1), (1, 3)])
def test_every_cut_and_chunk_gives_torch_funcs_jacobian(wrt):
    model, inputs = Residual().double(), _inputs()
    graph = GraphSegments(torch.export.export(model, tuple(inputs)).module(), len(inputs))
    expected = _expected(model, inputs, wrt)
    nodes = len(graph.compute)
    for step in (nodes, nodes // 3, 7, 1):
        cuts = tuple(range(step, nodes, step))
        for chunk, one_sweep in ((1, False), (2, False), (4, False), (1, True), (3, True)):
            plan = SegmentPlan(cuts, chunk, 0, one_sweep=one_sweep)
            outputs, blocks, _ = graph.jacobian(inputs, wrt, plan)
            torch.testing.assert_close(outputs[0], model(*inputs)[0])
            for i in range(2):
                for k in range(len(wrt)):
                    torch.testing.assert_close(
                        blocks[i * len(wrt) + k], expected[i][k], rtol=1e-12, atol=1e-12
                    )


class Narrow(torch.nn.Module):
    """A deep tanh network read out by 4 sums: its tape dwarfs its Jacobian."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(24, 24) for _ in range(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x[:, :4].sum(0)


def test_the_engine_keeps_the_measured_peak_under_the_budget():
    model = Narrow().double()
    x = torch.randn(8, 24, dtype=F64)
    gm = torch.export.export(model, (x,)).module()
    tape = GraphSegments(gm, 1).profile([x], (0,)).tape_bytes
    budget = tape // 3 + 2 * (4 * x.numel() + x.numel()) * 8
    cache = DerivativeCache(1 << 24)
    for _ in range(2):
        with LiveTensorMeter() as meter:
            result = engine.jacobian(
                gm, [x], mode="reverse", max_memory_bytes=budget, cache=cache, graph=lambda _: gm
            )
        assert result.metrics.checkpoint_segments >= 2
        assert meter.peak_bytes <= budget
    expected = torch.func.jacrev(model)(x)
    torch.testing.assert_close(result.values[0], expected, rtol=1e-12, atol=1e-12)


def test_without_a_graph_a_budget_too_small_is_refused_as_before():
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64)
    ).double()
    x = torch.randn(64, dtype=F64)
    with pytest.raises(ResourceExhausted, match="max_memory_bytes"):
        engine.jacobian(model, [x], mode="reverse", max_memory_bytes=2_000, memory_meter="tensors")


class Noisy(torch.nn.Module):
    """Random numbers drawn in the middle of the network (noise injection)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            x = torch.tanh(layer(x))
            if k % 4 == 1:
                x = x * (1 + 0.5 * torch.rand_like(x))
        return x.sum(0)


def test_recomputed_segments_draw_the_random_numbers_the_forward_sweep_drew():
    model = Noisy().double()
    x = torch.randn(4, 16, dtype=F64)
    gm = torch.export.export(model, (x,)).module()
    graph = GraphSegments(gm, 1)
    nodes = len(graph.compute)
    torch.manual_seed(7)
    expected = torch.func.jacrev(model)(x)  # the Jacobian at the noise seed 7 draws
    for cuts in ((), tuple(range(5, nodes, 5))):
        torch.manual_seed(7)
        _, blocks, _ = graph.jacobian([x], (0,), SegmentPlan(cuts, 3, 0))
        torch.testing.assert_close(blocks[0], expected, rtol=1e-12, atol=1e-12)
    cache = DerivativeCache(1 << 24)
    torch.manual_seed(7)
    result = engine.jacobian(
        gm, [x], mode="reverse", max_memory_bytes=20_000, cache=cache, graph=lambda _: gm
    )
    assert result.metrics.checkpoint_segments >= 2  # and its check against forward mode held
    torch.testing.assert_close(result.values[0], expected, rtol=1e-12, atol=1e-12)
