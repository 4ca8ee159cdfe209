"""One Jacobian split across several servers: windows of passes, retried elsewhere.

NOTE: [Scale-out of one Jacobian]
A Jacobian is n forward passes (one per input element) or m reverse passes (one per
output element), each independent of the others. So the client

1. asks one server for a *plan* (``PassRange [0, 0)``): the outputs, the mode the server
   chooses (measured costs, as for any Jacobian) and the number of passes P;
2. cuts [0, P) into windows, about four per lane (load balance, and a failed window is
   cheap to redo), none whose result is above half the message limit;
3. runs one lane per server (or ``shards`` lanes over one round-robin channel): each
   takes the next window, asks its server for those passes in the planned mode, and
   copies the rows into the result;
4. a window that fails with UNAVAILABLE, DEADLINE_EXCEEDED (of a try), INTERNAL,
   RESOURCE_EXHAUSTED or NOT_FOUND (a replica without the model) goes back to the queue
   and its lane stops; the live lanes finish the work. A down replica costs time, not
   the answer. Any other error (the request itself is wrong) is raised at once.

Memory on the client: the Jacobian as an M × N matrix, then the blocks cut from it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from jacserve.client._results import DerivativeMetrics, JacobianResult
from jacserve.client._structure import CallInputs, output_tree
from jacserve.client.errors import JacserveError
from jacserve.codec import decode_tensor, decode_tensors, is_torch_tensor
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = [
    "ShardReport",
    "ShardedJacobian",
    "pass_window_plan",
    "resolved_addresses",
    "split_passes",
    "worth_splitting",
]

WINDOWS_PER_LANE = 4
SPLIT_MIN_SECONDS = 0.1
"""Below this estimated time a Jacobian is computed whole: a window costs ~8 ms fixed
(bench/scaleout.py), and a 200 x 200 Jacobian split over 3 replicas took 38 ms against
4 ms whole."""
SPLIT_MIN_ELEMENTS = 1 << 20
"""Without an estimate (a forced mode), split Jacobians of at least this many elements."""
MOVABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.CANCELLED,
    }
)
"""Failures that another replica may not have: the window moves there."""


@dataclass(frozen=True)
class ShardReport:
    """One window of passes as it was computed: where, and how long it took.

    ``seconds`` is the client's wall time for the call, ``server_seconds`` the server's
    own total; ``failed_on`` lists replicas that failed this window before it succeeded.
    """

    target: str
    start: int
    stop: int
    seconds: float
    server_seconds: float
    failed_on: tuple[str, ...] = ()


def split_passes(total: int, lanes: int, max_rows: int) -> list[tuple[int, int]]:
    """Windows ``[start, stop)`` covering ``total`` passes: about
    ``WINDOWS_PER_LANE`` per lane, none longer than ``max_rows``.

    >>> split_passes(10, 2, 100)
    [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    >>> split_passes(10, 1, 3)
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    if total <= 0:
        return []
    count = max(1, min(total, lanes * WINDOWS_PER_LANE))
    size = max(1, min(max_rows, -(-total // count)))
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def worth_splitting(plan: pb.JacobianResponse, lanes: int) -> bool:
    """Whether a planned Jacobian is big enough to split over ``lanes``.

    >>> metrics = pb.DerivativeMetrics(passes=4000, estimated_reverse_seconds=0.5)
    >>> worth_splitting(pb.JacobianResponse(metrics=metrics), 3)
    True
    """
    metrics = DerivativeMetrics.from_wire(plan.metrics)
    if metrics.passes < 2 * lanes:
        return False
    estimate = (
        metrics.estimated_forward_seconds
        if metrics.mode == "forward"
        else metrics.estimated_reverse_seconds
    )
    if estimate > 0:
        return estimate >= SPLIT_MIN_SECONDS
    return metrics.input_size * metrics.output_size >= SPLIT_MIN_ELEMENTS


Caller = Callable[[int, pb.JacobianRequest, float | None], pb.JacobianResponse]
"""``call(replica, request, timeout)``: one try of a Jacobian request on one replica."""


class ShardedJacobian:
    """Computes one Jacobian by windows of passes over several replicas.

    Args:
        call: sends a request to replica ``i`` (one try, no retries).
        targets: the replicas' names, for reports and messages.
        lanes: concurrent windows; lane ``k`` uses replica ``k % len(targets)``.
        max_message_bytes: the smaller of the client's and the server's message limits.
    """

    def __init__(
        self, call: Caller, targets: Sequence[str], lanes: int, max_message_bytes: int
    ) -> None:
        self._call = call
        self._targets = tuple(targets)
        self._lanes = max(1, lanes)
        self._max_message_bytes = max_message_bytes

    def run(
        self,
        plan_request: pb.JacobianRequest,
        plan: pb.JacobianResponse,
        inputs: CallInputs,
        deadline: float | None,
    ) -> JacobianResult:
        """Compute every window in the mode of ``plan`` (the answer to ``plan_request``),
        with ``deadline`` (``time.monotonic()``) for all of them; raises the first error
        that no other replica can help with, or the last one when every lane failed."""
        metrics = DerivativeMetrics.from_wire(plan.metrics)
        outputs = decode_tensors(plan.outputs, numpy=inputs.numpy)
        tree = output_tree(plan, len(outputs))
        n, m, total = metrics.input_size, metrics.output_size, metrics.passes
        forward = metrics.mode == "forward"
        width = m if forward else n
        matrix = _empty_like_output((m, n), outputs, inputs.numpy)
        itemsize = matrix.element_size() if is_torch_tensor(matrix) else matrix.itemsize
        max_rows = max(1, (self._max_message_bytes // 2) // max(1, width * itemsize))
        windows = split_passes(total, self._lanes, max_rows)
        template = pb.JacobianRequest()
        template.CopyFrom(plan_request)
        template.mode = pb.DERIVATIVE_MODE_FORWARD if forward else pb.DERIVATIVE_MODE_REVERSE

        def store(start: int, stop: int, rows: Any) -> None:
            if forward:
                matrix[:, start:stop] = rows.T
            else:
                matrix[start:stop, :] = rows

        started = time.perf_counter()
        reports = _Lanes(self, template, windows, store, deadline, inputs.numpy).run()
        blocks = _cut(matrix, outputs, self._wrt_shapes(plan_request, metrics))
        wall = time.perf_counter() - started
        server = sum(r.server_seconds for r in reports)
        combined = dataclasses.replace(
            metrics,
            passes=total,
            chunks=len(reports),
            timing={**metrics.timing, "derivative": server, "total": wall},
        )
        return JacobianResult(
            output=tree.unflatten(list(outputs)),
            jacobian=inputs.jacobian(blocks, tree),
            metrics=combined,
            shards=tuple(sorted(reports, key=lambda r: r.start)),
        )

    @staticmethod
    def _wrt_shapes(
        request: pb.JacobianRequest, metrics: DerivativeMetrics
    ) -> list[tuple[int, ...]]:
        inputs = [tuple(t.shape) for t in request.inputs]
        floating = (pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16, pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64)
        wrt = list(request.wrt) or [i for i, t in enumerate(request.inputs) if t.dtype in floating]
        shapes = [inputs[i] for i in wrt]
        if sum(math.prod(s) for s in shapes) != metrics.input_size:
            raise JacserveError(
                "the server's plan does not match the differentiated inputs",
                code=grpc.StatusCode.INTERNAL,
            )
        return shapes


def _empty_like_output(shape: tuple[int, int], outputs: Sequence[Any], numpy: bool) -> Any:
    """An uninitialized matrix of the outputs' dtype (float32 without outputs)."""
    if numpy:
        return np.empty(shape, dtype=outputs[0].dtype if outputs else np.float32)
    import torch

    return torch.empty(shape, dtype=outputs[0].dtype if outputs else torch.float32)


def _cut(matrix: Any, outputs: Sequence[Any], inputs: Sequence[tuple[int, ...]]) -> list[Any]:
    """Blocks ``[i][j]`` of shape ``outputs[i].shape + inputs[j]``, row-major."""
    blocks, row = [], 0
    for output in outputs:
        size, column = math.prod(output.shape), 0
        for shape in inputs:
            part = matrix[row : row + size, column : column + math.prod(shape)]
            blocks.append(part.reshape((*output.shape, *shape)))
            column += math.prod(shape)
        row += size
    return blocks


class _Lanes:
    """The lanes of one sharded Jacobian and the queue of windows they share."""

    def __init__(
        self,
        owner: ShardedJacobian,
        template: pb.JacobianRequest,
        windows: list[tuple[int, int]],
        store: Callable[[int, int, Any], None],
        deadline: float | None,
        numpy: bool = False,
    ) -> None:
        self._owner, self._template, self._store = owner, template, store
        self._deadline = deadline
        self._numpy = numpy
        self._pending: collections.deque[tuple[int, int, tuple[str, ...]]] = collections.deque(
            (a, b, ()) for a, b in windows
        )
        self._in_flight = 0
        self._condition = threading.Condition()
        self._reports: list[ShardReport] = []
        self._error: JacserveError | None = None
        self._last_movable: JacserveError | None = None

    def run(self) -> list[ShardReport]:
        targets = self._owner._targets
        lanes = min(self._owner._lanes, max(1, len(self._pending)))
        threads = [
            threading.Thread(target=self._lane, args=(k % len(targets),), daemon=True)
            for k in range(lanes)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._error is not None:
            raise self._error
        if self._pending:  # every lane stopped on a replica failure
            assert self._last_movable is not None
            raise self._last_movable
        return self._reports

    def _take(self) -> tuple[int, int, tuple[str, ...]] | None:
        with self._condition:
            while not self._pending and self._in_flight and self._error is None:
                self._condition.wait()
            if not self._pending or self._error is not None:
                return None
            self._in_flight += 1
            return self._pending.popleft()

    def _lane(self, replica: int) -> None:
        target = self._owner._targets[replica]
        while (window := self._take()) is not None:
            start, stop, failed_on = window
            request = pb.JacobianRequest()
            request.CopyFrom(self._template)
            request.passes.start, request.passes.stop = start, stop
            remaining = None
            if self._deadline is not None:
                remaining = max(0.0, self._deadline - time.monotonic())
            began = time.perf_counter()
            try:
                response = self._owner._call(replica, request, remaining)
                self._store(
                    start,
                    stop,
                    decode_tensor(response.jacobian[0], name="jacobian", numpy=self._numpy),
                )
            except JacserveError as exc:
                self._fail(exc, (start, stop, (*failed_on, target)))
                return  # this replica is out for the rest of the Jacobian
            server = DerivativeMetrics.from_wire(response.metrics).timing.get("total", 0.0)
            report = ShardReport(
                target, start, stop, time.perf_counter() - began, server, failed_on
            )
            with self._condition:
                self._in_flight -= 1
                self._reports.append(report)
                self._condition.notify_all()

    def _fail(self, error: JacserveError, window: tuple[int, int, tuple[str, ...]]) -> None:
        """Requeue the window for another replica, or record an error that stops all."""
        with self._condition:
            self._in_flight -= 1
            late = self._deadline is not None and time.monotonic() >= self._deadline
            if error.code in MOVABLE and not late:
                self._pending.appendleft(window)
                self._last_movable = error
            elif self._error is None:
                self._error = error
            self._condition.notify_all()


def pass_window_plan(request: pb.JacobianRequest) -> pb.JacobianRequest:
    """A copy of ``request`` that only plans (``PassRange [0, 0)``).

    >>> pass_window_plan(pb.JacobianRequest()).HasField("passes")
    True
    """
    plan = pb.JacobianRequest()
    plan.CopyFrom(request)
    plan.passes.SetInParent()
    plan.passes.start = plan.passes.stop = 0
    return plan


def resolved_addresses(target: str) -> int:
    """How many servers a ``dns:///host:port`` target names (1 for any other target, or
    when the name does not resolve here).

    >>> resolved_addresses("127.0.0.1:50051")
    1
    """
    if not target.startswith("dns:"):
        return 1
    host_port = target.split("/")[-1]
    host, _, port = host_port.rpartition(":")
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port or 443), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return 1
    return max(1, len({address[4][0] for address in found}))
