"""The streamed Jacobian a worker answers: a header, slices of a bounded size and the
metrics, or one complete response when it fits in one slice (:class:`StreamingHandlers`,
a part of the worker's handlers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jacserve.codec import dtype_to_wire, encode_tensors
from jacserve.server.errors import InvalidArgument
from jacserve.server.worker import structure
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["STREAM_BLOCK_BYTES", "StreamingHandlers"]

STREAM_BLOCK_BYTES = 4 << 20
"""The default size of a streamed slice."""


class StreamingHandlers:
    """Mixed into ``DerivativeHandlers``: uses its ``_prepare``, ``_encode``,
    ``_with_metrics``, ``_wire_metrics``, ``_compute_jacobian`` and ``_settings``."""

    _prepare: Any
    _encode: Any
    _with_metrics: Any
    _wire_metrics: Any
    _compute_jacobian: Any
    _settings: Any

    def stream_jacobian(
        self, request: pb.StreamJacobianRequest, deadline: float
    ) -> Iterator[pb.StreamJacobianResponse]:
        """The Jacobian as a header, slices of at most ``max_block_bytes`` each, metrics;
        or as one complete response when it fits in one block."""
        if request.max_block_bytes < 0:
            raise InvalidArgument(
                f"max_block_bytes must be >= 0 (0: the server's choice); got {request.max_block_bytes}"
            )
        limit = self._settings.max_message_bytes - (64 << 10)
        block_bytes = min(request.max_block_bytes or STREAM_BLOCK_BYTES, limit)
        model, result, phases, _, fn = self._compute_jacobian(request.request, deadline)
        output_fields = structure.output_fields(fn, len(result.outputs), result.tuple_output)
        size = sum(v.numel() * v.element_size() for v in (*result.outputs, *result.values))
        if size <= block_bytes:  # one message: no header, slices and metrics to exchange
            whole = pb.StreamJacobianResponse()
            whole.complete.CopyFrom(pb.JacobianResponse(**output_fields))
            self._encode(phases, whole.complete, outputs=result.outputs, jacobian=result.values)
            self._with_metrics(whole.complete, result, phases, model)
            yield whole
            return
        outputs = self._encode(phases, pb.JacobianResponse(), outputs=result.outputs).outputs
        with phases.phase("encode"):
            blocks = [v.detach().to("cpu").contiguous().reshape(-1) for v in result.values]
        plan = []
        for k, block in enumerate(blocks):
            step = max(1, block_bytes // block.element_size())
            plan += [(k, a, min(a + step, block.numel())) for a in range(0, block.numel(), step)]
        yield pb.StreamJacobianResponse(
            header=pb.JacobianStreamHeader(
                outputs=outputs,
                **output_fields,
                block_shapes=[
                    pb.BlockShape(dims=list(v.shape), dtype=dtype_to_wire(v.dtype))
                    for v in result.values
                ],
                slices=len(plan),
            )
        )
        for k, start, stop in plan:
            with phases.phase("encode"):
                values = encode_tensors([blocks[k][start:stop]])[0]
            yield pb.StreamJacobianResponse(
                slice=pb.JacobianSlice(block=k, start=start, values=values)
            )
        yield pb.StreamJacobianResponse(metrics=self._wire_metrics(result, phases, model))
