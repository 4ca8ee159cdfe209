"""Planning checkpointed reverse mode: what each node's tape and output take, and the cut
of a graph (and chunk of rows) whose estimated peak fits a memory budget (see NOTE:
[Checkpointed reverse] in ``checkpointed``).

>>> SegmentPlan((3, 7), 4, 1000).segments
3
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx.node import Node

from jacserve.server.errors import Reason, ResourceExhausted

__all__ = ["Profile", "SegmentPlan", "SegmentPlanning", "nbytes", "storage_key"]

_HEADROOM = 0.85  # of the budget: allocator rounding and what the estimate misses


@dataclass(frozen=True)
class SegmentPlan:
    """Where the graph is cut (indices of the compute nodes that start a segment), how
    many cotangent rows go through a segment's VJP at once, the estimated peak bytes, and
    whether one backward sweep carries every row (each segment recomputed once) or each
    chunk of rows has a sweep of its own (each segment recomputed once per chunk)."""

    cuts: tuple[int, ...]
    chunk: int
    estimated_peak_bytes: int
    one_sweep: bool = False  # every row's cotangents held: each segment recomputed once

    @property
    def segments(self) -> int:
        """K, the number of segments."""
        return len(self.cuts) + 1


@dataclass(frozen=True)
class Profile:
    """Bytes per compute node: what its op saves for the backward pass (new storage
    only), and its output; and the method's output elements (M)."""

    saved: tuple[int, ...]
    produced: tuple[int, ...]
    output_elements: int

    @property
    def tape_bytes(self) -> int:
        """What a whole reverse tape would hold."""
        return sum(self.saved)

    @property
    def largest_output(self) -> int:
        """The largest value a node produces (about what one pass carries)."""
        return max(self.produced, default=0)


def nbytes(value: Any) -> int:
    """Bytes of a tensor (or of a tuple or list of them; 0 for anything else).

    >>> nbytes((torch.zeros(2), [torch.zeros(3, dtype=torch.float64)], 5))
    32
    """
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(nbytes(v) for v in value)
    return 0


def storage_key(tensor: torch.Tensor) -> int:
    """The address of a tensor's storage (two views of one storage share it).

    >>> t = torch.zeros(4)
    >>> storage_key(t) == storage_key(t[1:])
    True
    """
    return int(tensor.untyped_storage().data_ptr())


class SegmentPlanning:
    """Mixed into :class:`~jacserve.server.engine.checkpointed.GraphSegments`: uses its
    ``compute``, ``placeholders``, ``outputs``, ``_index``, ``_last_use``, ``_resident``,
    ``_gm``, ``_run``, ``_segments``, ``_reads`` and ``_kept``."""

    compute: list[Node]
    placeholders: list[Node]
    outputs: list[Node]
    _index: dict[Node, int]
    _last_use: dict[Node, int]
    _resident: dict[Node, Any]
    _gm: torch.fx.GraphModule
    _run: Any
    _segments: Any
    _reads: Any
    _kept: Any

    def profile(self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Profile:
        """One forward pass recording what each node's op would save (nothing is kept)."""
        saved = [0] * len(self.compute)
        produced = [0] * len(self.compute)
        current = [0]
        resident = {storage_key(t) for t in (*inputs, *self._gm.parameters(), *self._gm.buffers())}
        counted: set[int] = set()  # storages saved already (an address leaves when freed)

        def pack(tensor: torch.Tensor) -> None:
            key = storage_key(tensor)
            if key in resident or key in counted:
                return  # weights, inputs, and a tensor two ops save take no more memory
            counted.add(key)
            storage = tensor.untyped_storage()
            weakref.finalize(storage, counted.discard, key)
            saved[current[0]] += storage.nbytes()

        def unpack(_: None) -> torch.Tensor:
            raise RuntimeError("the profiling pass keeps no tape")

        env: dict[Node, Any] = dict(self._resident)
        for j, (node, value) in enumerate(zip(self.placeholders, inputs, strict=True)):
            grad = j in wrt and value.is_floating_point()
            env[node] = value.detach().requires_grad_(True) if grad else value
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            for i, node in enumerate(self.compute):
                current[0] = i
                env[node] = self._run(node, env)
                produced[i] = nbytes(env[node])
                for used in node.all_input_nodes:
                    if self._last_use.get(used, -1) <= i and used not in self.outputs:
                        env.pop(used, None)
        elements = sum(env[o].numel() for o in self.outputs)
        return Profile(tuple(saved), tuple(produced), elements)

    def _estimate(
        self, profile: Profile, cuts: Sequence[int], chunk: int, fixed: int, rows: int = 0
    ) -> int:
        """Peak bytes of a plan: the result and inputs (``fixed``), the values the forward
        sweep keeps, a chunk of cotangents for the values crossing the current segment,
        and the largest segment's recomputed tape with a chunk of cotangents flowing
        through it (about two of its activations at a time)."""
        segments = self._segments(cuts)
        kept = sum(
            profile.produced[self._index[n]] for n in self._kept(segments) if n in self._index
        )
        crossing = max(
            sum(profile.produced[self._index[n]] for n in self._reads(s) if n in self._index)
            for s in segments
        )
        largest = max(
            sum(profile.saved[i] for i in s) + 2 * chunk * max(profile.produced[i] for i in s)
            for s in segments
            if len(s)
        )
        if rows:  # one sweep: every row's cotangents of the crossing values, twice over
            return fixed + kept + 2 * rows * crossing + largest
        return fixed + kept + chunk * crossing + largest

    def _greedy(self, profile: Profile, cap: int) -> tuple[int, ...]:
        """Cut before a node whenever the segment's tape would pass ``cap`` bytes."""
        cuts, used = [], 0
        for i, saved in enumerate(profile.saved):
            if used and used + saved > cap:
                cuts.append(i)
                used = 0
            used += saved
        return tuple(cuts)

    def plan(
        self,
        inputs: Sequence[torch.Tensor],
        wrt: Sequence[int],
        *,
        budget: int,
        element_bytes: int,
        profile: Profile | None = None,
    ) -> SegmentPlan:
        """The fewest segments (and the largest chunk of rows) whose estimated peak is
        within ``budget``, from one profiling pass (``profile``, or one run now).

        Raises:
            ResourceExhausted: not even one row through single-node segments fits.
        """
        profile = profile or self.profile(inputs, wrt)
        m = profile.output_elements
        n = sum(inputs[j].numel() for j in wrt)
        fixed = (m * n + m) * element_bytes + sum(nbytes(t) for t in inputs)
        target = int(budget * _HEADROOM)
        finest = max(profile.saved, default=0)
        least = None
        seeds = m * m * element_bytes  # the identity's rows over the outputs
        for chunk in self._halvings(m):  # one sweep, each segment recomputed once
            cap = max(1, sum(profile.saved))
            while True:
                cuts = self._greedy(profile, cap)
                peak = self._estimate(profile, cuts, chunk, fixed + seeds, rows=m)
                if peak <= target:
                    return SegmentPlan(cuts, chunk, peak, one_sweep=True)
                least = peak if least is None else min(least, peak)
                if cap <= finest:
                    break
                cap = max(finest, cap // 2)
        chunk = max(1, m)
        while True:
            cap = max(1, sum(profile.saved))
            while True:
                cuts = self._greedy(profile, cap)
                peak = self._estimate(profile, cuts, chunk, fixed)
                if peak <= target:
                    return SegmentPlan(cuts, chunk, peak)
                least = peak if least is None else min(least, peak)
                if cap <= finest:
                    break
                cap = max(finest, cap // 2)
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
        raise ResourceExhausted(
            f"the Jacobian needs at least {least} bytes even in checkpointed reverse mode "
            f"(the best cut of its program, one row at a time), above the memory budget of "
            f"{budget} bytes "
            f"(max_memory_bytes); raise the budget or differentiate fewer inputs (wrt)",
            reason=Reason.BUDGET_TOO_SMALL,
            field="options.max_memory_bytes",
            bytes_needed=least,
            budget_bytes=budget,
            mode="reverse",
        )

    @staticmethod
    def _halvings(m: int) -> list[int]:
        """m, m/2, … 1 (rows per VJP call)."""
        sizes, size = [], max(1, m)
        while size > 1:
            sizes.append(size)
            size //= 2
        return [*sizes, 1]
