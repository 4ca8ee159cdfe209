"""Reverse mode within any memory budget: a program's graph cut into segments whose
activations are recomputed in the backward sweep.

NOTE: [Checkpointed reverse]
A reverse-mode Jacobian keeps the whole forward tape (every tensor an op saves for its
derivative) while its passes run. When that tape does not fit the budget, the method's
FX graph (a torch.export program's, or TorchScript's converted) is cut into K contiguous
segments of its nodes. The forward sweep runs without a tape and keeps only the values
that cross a cut. The backward sweep walks the segments from last to first: it recomputes
one segment from the values it kept, takes that segment's VJP (``torch.func.vjp``) and
applies it to the cotangent rows in chunks (``vmap``), adding the cotangents of the
values the segment read. So only one segment's tape is alive at a time. When every
row's cotangents of the values crossing a cut fit, one sweep carries them all and each
segment is recomputed once (about one extra forward pass); otherwise each chunk of rows
has a sweep of its own, recomputing every segment again. K and the chunk are chosen
from the memory each node's tape and outputs measured in one profiling forward pass
(saved-tensor hooks count what autograd would keep, and keep nothing): one sweep with
the fewest segments if any fits the budget, else the largest chunk of rows that does.

>>> import torch
>>> class Deep(torch.nn.Module):
...     def forward(self, x):
...         for _ in range(4):
...             x = torch.tanh(x * 1.5)
...         return x.sum(0)
>>> x = torch.randn(3, 2, dtype=torch.float64)
>>> gm = torch.export.export(Deep(), (x,)).module()
>>> graph = GraphSegments(gm, 1)
>>> plan = graph.plan([x], (0,), budget=1 << 30, element_bytes=8)
>>> outputs, blocks, _ = graph.jacobian([x], (0,), plan)
>>> expected = torch.func.jacrev(Deep())(x)
>>> bool(torch.allclose(blocks[0], expected)), len(plan.cuts) + 1 >= 1
(True, True)
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.func import vjp, vmap
from torch.fx.node import Node, map_arg

from jacserve.server.engine._segment_plan import (
    Profile,
    SegmentPlan,
    SegmentPlanning,
)

__all__ = ["GraphSegments", "Profile", "SegmentPlan", "replaying", "rng_state"]


def _attribute(gm: torch.fx.GraphModule, target: str) -> Any:
    """A weight or constant of the graph, as a tensor that needs no derivative (an alias
    of the same storage: no copy, no op)."""
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value.data if isinstance(value, torch.Tensor) else value


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The CPU and every CUDA device's random-number state."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


@contextlib.contextmanager
def replaying(state: tuple[torch.Tensor, list[torch.Tensor]]) -> Iterator[None]:
    """Run with the random-number state ``state``, then put the current one back."""
    current = rng_state()
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(current)


def _differentiable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


class GraphSegments(SegmentPlanning):
    """A method's FX graph, run in segments (see NOTE: [Checkpointed reverse]).

    Args:
        gm: the method as a ``torch.fx.GraphModule`` whose placeholders are the method's
            tensor inputs in order and whose output is a tuple of tensors (a torch.export
            program's ``module()``).
        inputs: how many inputs the method takes.

    Raises:
        ValueError: a graph that does not have that form.
    """

    def __init__(self, gm: torch.fx.GraphModule, inputs: int) -> None:
        self._gm = gm
        nodes = list(gm.graph.nodes)
        self.placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(self.placeholders) != inputs:
            raise ValueError(f"the graph has {len(self.placeholders)} inputs, the method {inputs}")
        output = next(n for n in nodes if n.op == "output")
        flat = output.args[0]
        self.outputs: list[Node] = list(flat) if isinstance(flat, tuple | list) else [flat]
        if not all(isinstance(o, Node) for o in self.outputs):
            raise ValueError("the graph returns something other than tensors")
        self._resident = {  # weights and constants: no derivative, no new memory
            n: _attribute(gm, str(n.target)) for n in nodes if n.op == "get_attr"
        }
        self.compute = [n for n in nodes if n.op not in ("placeholder", "output", "get_attr")]
        self._index = {n: i for i, n in enumerate(self.compute)}
        self._modules: dict[tuple[int, tuple[Node, ...]], torch.fx.GraphModule] = {}
        self._reads_of: dict[tuple[int, int], list[Node]] = {}
        end = len(self.compute)
        self._last_use = {
            n: max((self._index.get(u, end) for u in n.users), default=-1)
            for n in [*self.placeholders, *self.compute]
        }
        for o in self.outputs:
            self._last_use[o] = end

    @property
    def tuple_output(self) -> bool:
        """Whether the method returns a tuple (its output spec), not one tensor."""
        spec = getattr(self._gm, "_out_spec", None)
        if spec is not None and getattr(spec, "type", None) in (tuple, list):
            return True
        return len(self.outputs) > 1

    # -- running nodes ------------------------------------------------------------------

    def _run(self, node: Node, env: dict[Node, Any]) -> Any:
        args = map_arg(node.args, lambda n: env[n])
        kwargs = map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return self._gm.get_submodule(str(node.target))(*args, **kwargs)

    def _segments(self, cuts: Sequence[int]) -> list[range]:
        bounds = [0, *cuts, len(self.compute)]
        return [range(a, b) for a, b in itertools.pairwise(bounds)]

    def _defined_at(self, node: Node) -> int:
        return self._index.get(node, -1)  # placeholders: before every segment

    def _reads(self, segment: range) -> list[Node]:
        """Values a segment reads that are defined before it (its inputs), worked out once
        per segment (planning tries many cuts, and every sweep walks every segment)."""
        key = (segment.start, segment.stop)
        if key not in self._reads_of:
            seen: dict[Node, None] = {}
            for i in segment:
                for used in self.compute[i].all_input_nodes:
                    if self._defined_at(used) < segment.start:
                        seen[used] = None
            self._reads_of[key] = list(seen)
        return self._reads_of[key]

    def _kept(self, segments: Sequence[range]) -> set[Node]:
        """The values the forward sweep keeps: every segment's inputs and the outputs."""
        kept = set(self.outputs)
        for segment in segments:
            kept.update(self._reads(segment))
        return kept

    # -- planning -----------------------------------------------------------------------

    # -- running ------------------------------------------------------------------------

    def _module(self, segment: range, reads: Sequence[Node], writes: Sequence[Node]) -> Any:
        """The segment as generated Python (``torch.fx``): ``reads`` in, ``writes`` out,
        each value freed after its last use."""
        key = (segment.start, tuple(writes))
        if key not in self._modules:
            graph = torch.fx.Graph()
            env = {n: graph.placeholder(f"in_{k}") for k, n in enumerate(reads)}
            for i in segment:
                node = self.compute[i]
                env[node] = graph.node_copy(node, lambda n: env[n])
            graph.output(tuple(env[w] for w in writes))
            self._modules[key] = torch.fx.GraphModule(self._gm, graph)
        return self._modules[key]

    def _forward(
        self, inputs: Sequence[torch.Tensor], segments: Sequence[range], states: list[Any]
    ) -> dict[Node, Any]:
        """Run every segment without a tape, keeping the values that cross a cut and the
        random-number state each segment started from (appended to ``states``), so that
        recomputing a segment draws the same random numbers (dropout, noise)."""
        kept = self._kept(segments)
        env: dict[Node, Any] = {
            **self._resident,
            **dict(zip(self.placeholders, inputs, strict=True)),
        }
        with torch.no_grad():
            for segment in segments:
                states.append(rng_state())
                reads = self._reads(segment)
                writes = [self.compute[i] for i in segment if self.compute[i] in kept]
                env.update(
                    zip(
                        writes,
                        self._module(segment, reads, writes)(*[env[n] for n in reads]),
                        strict=True,
                    )
                )
        return {n: env[n] for n in kept if n in env}

    def _segment_function(
        self, segment: range, reads: Sequence[Node], kept: dict[Node, Any], writes: Sequence[Node]
    ) -> Any:
        differentiable = [n for n in reads if n not in self._resident and _differentiable(kept[n])]
        module = self._module(segment, reads, writes)
        slots = {n: k for k, n in enumerate(reads)}

        def run(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            args = [kept[n] for n in reads]
            for node, value in zip(differentiable, values, strict=True):
                args[slots[node]] = value
            return tuple(module(*args))

        return run, differentiable

    def _rows(self, m: int, chunk: int) -> Iterator[tuple[int, int]]:
        for start in range(0, m, chunk):
            yield start, min(m, start + chunk)

    def jacobian(
        self, inputs: Sequence[torch.Tensor], wrt: Sequence[int], plan: SegmentPlan
    ) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor], float]:
        """(outputs, blocks [i][j] of shape output_i.shape + input_wrt[j].shape, seconds
        spent recomputing segments)."""
        segments = self._segments(plan.cuts)
        states: list[Any] = []
        kept = self._forward(inputs, segments, states)
        after = rng_state()
        recompute = 0.0
        outputs = tuple(kept[o] for o in self.outputs)
        sizes = [o.numel() for o in outputs]
        m = sum(sizes)
        rows: dict[int, list[torch.Tensor]] = {j: [] for j in wrt}
        sweeps = [(0, m)] if plan.one_sweep else list(self._rows(m, plan.chunk))
        for start, stop in sweeps:
            cotangents = self._seed(outputs, start, stop)
            for k in reversed(range(len(segments))):
                segment = segments[k]
                writes = [self.compute[i] for i in segment if self.compute[i] in cotangents]
                if not writes:
                    continue
                run, reads = self._segment_function(segment, self._reads(segment), kept, writes)
                if not reads:  # it reads no input's descendant: no cotangent flows on
                    for w in writes:
                        cotangents.pop(w)
                    continue
                started = time.perf_counter()
                with replaying(states[k]):
                    _, pullback = vjp(run, *[kept[n] for n in reads])
                recompute += time.perf_counter() - started
                flowing = tuple(cotangents.pop(w) for w in writes)
                for a, b in self._rows(stop - start, plan.chunk):
                    pulled = vmap(pullback)(tuple(f[a:b] for f in flowing))
                    for node, value in zip(reads, pulled, strict=True):
                        if node not in cotangents:
                            cotangents[node] = value.new_zeros((stop - start, *value.shape[1:]))
                        cotangents[node][a:b] += value
                del pullback, flowing  # this segment's tape goes before the next is recorded
            for j in wrt:
                found = cotangents.get(self.placeholders[j])
                if found is None:
                    found = inputs[j].new_zeros((stop - start, *inputs[j].shape))
                rows[j].append(found)
        blocks = []
        offsets = [0, *itertools.accumulate(sizes)]
        for i, output in enumerate(outputs):
            for j in wrt:
                whole = torch.cat(rows[j])[offsets[i] : offsets[i + 1]]
                blocks.append(whole.reshape((*output.shape, *inputs[j].shape)))
        _set_rng_state(after)  # as if the model had run once
        return outputs, blocks, recompute

    def _seed(self, outputs: Sequence[torch.Tensor], start: int, stop: int) -> dict[Node, Any]:
        """Cotangents of the outputs for rows [start, stop) of the identity."""
        seeds: dict[Node, Any] = {}
        offset = 0
        for node, value in zip(self.outputs, outputs, strict=True):
            rows = torch.zeros(
                (stop - start, value.numel()), dtype=value.dtype, device=value.device
            )
            for r in range(max(start, offset), min(stop, offset + value.numel())):
                rows[r - start, r - offset] = 1
            seed = rows.reshape(stop - start, *value.shape)
            seeds[node] = seeds[node] + seed if node in seeds else seed
            offset += value.numel()
        return seeds
