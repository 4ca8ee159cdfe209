"""Reading Jacobians: a unary response, or a StreamJacobian stream assembled slice by
slice (into preallocated blocks, or handed to a callback), and their sizes.

>>> import torch
>>> from jacserve.client._structure import call_inputs
>>> from jacserve.codec import encode_tensors
>>> response = pb.JacobianResponse()
>>> _ = encode_tensors([torch.ones(2)], into=response.outputs)
>>> _ = encode_tensors([torch.eye(2)], into=response.jacobian)
>>> parse_jacobian(response, call_inputs(torch.ones(2))).jacobian.shape
torch.Size([2, 2])
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from jacserve.client._results import DerivativeMetrics, JacobianResult
from jacserve.client._structure import CallInputs, call_inputs, output_tree
from jacserve.codec import (
    decode_tensor,
    decode_tensors,
    dtype_from_wire,
    is_torch_tensor,
    numpy_dtype_from_wire,
)
from jacserve.pytree import flatten
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["JacobianAssembler", "SliceCallback", "jacobian_key", "parse_jacobian", "result_bytes"]

SliceCallback = Callable[[int, int, Any], None]
"""``on_slice(block, start, values)``: flat elements ``[start, start + len(values))`` of
Jacobian block ``block`` (row-major over outputs × differentiated inputs)."""


class JacobianAssembler:
    """Builds a :class:`JacobianResult` from StreamJacobian messages as they arrive.

    Memory: the assembled Jacobian plus the slice being copied. With ``on_slice`` the
    slices go to the callback instead and ``jacobian`` of the result is ``None``.
    """

    def __init__(
        self,
        inputs: CallInputs,
        progress: bool | None = None,
        on_slice: SliceCallback | None = None,
    ) -> None:
        self._inputs = inputs
        self._complete: JacobianResult | None = None
        self._progress = progress
        self._on_slice = on_slice
        self._blocks: list[Any] = []
        self._outputs: list[Any] = []
        self._header: Any = None
        self._bar: Any = None
        self._metrics: DerivativeMetrics | None = None

    def feed(self, message: pb.StreamJacobianResponse) -> None:
        """Take one message of the stream."""
        part = message.WhichOneof("part")
        if part == "complete":  # small results come whole
            self._complete = parse_jacobian(message.complete, self._inputs)
            if self._on_slice is not None:
                for block, values in enumerate(_flat_blocks(self._complete.jacobian)):
                    self._on_slice(block, 0, values)
        elif part == "header":
            header = message.header
            self._outputs = list(decode_tensors(header.outputs, numpy=self._inputs.numpy))
            self._header = header
            if self._on_slice is None:
                self._blocks = [_empty(list(b.dims), b.dtype, self._inputs.numpy)
                                for b in header.block_shapes]  # fmt: skip
            self._bar = _progress_bar(self._progress, header.slices)
        elif part == "slice":
            values = decode_tensor(message.slice.values, name="slice", numpy=self._inputs.numpy)
            block, start = message.slice.block, message.slice.start
            if self._on_slice is not None:
                self._on_slice(block, start, values)
            else:
                self._blocks[block].reshape(-1)[start : start + _numel(values)] = values
            if self._bar is not None:
                self._bar.update(1)
        elif part == "metrics":
            self._metrics = DerivativeMetrics.from_wire(message.metrics)

    def result(self) -> JacobianResult:
        """The assembled result, once the metrics (the last message) arrived."""
        if self._complete is not None:
            if self._on_slice is not None:
                return dataclasses.replace(self._complete, jacobian=None)
            return self._complete
        if self._bar is not None:
            self._bar.close()
        if self._metrics is None:
            raise ConnectionError("the Jacobian stream ended before its last message")
        tree = output_tree(self._header, len(self._outputs))
        jacobian = None if self._on_slice is not None else self._inputs.jacobian(self._blocks, tree)
        return JacobianResult(
            output=tree.unflatten(self._outputs),
            jacobian=jacobian,
            metrics=self._metrics,
        )


def jacobian_key(model: Any, method: str, inputs: Any, wrt: Any, batched: bool) -> tuple:
    """What determines a Jacobian's size: model, method, input shapes and dtypes, wrt."""
    tensors = call_inputs(inputs).leaves
    identity = model if isinstance(model, str) else id(model)
    signature = tuple((tuple(t.shape), t.dtype) for t in tensors)
    return (identity, method, signature, call_inputs(inputs).tree, tuple(wrt or ()), batched)


def result_bytes(result: JacobianResult) -> int | None:
    """Bytes of a Jacobian result's tensors (``None`` when it was not assembled)."""
    if result.jacobian is None:
        return None
    tensors = [*_flat_blocks(result.jacobian), *_flat_blocks(result.output)]
    return sum(_numel(t) * (t.element_size() if is_torch_tensor(t) else t.itemsize)
               for t in tensors)  # fmt: skip


def _numel(value: Any) -> int:
    return int(value.numel()) if is_torch_tensor(value) else int(value.size)


def _empty(shape: list[int], wire_dtype: int, numpy: bool) -> Any:
    """An uninitialized array or tensor of a wire dtype (NumPy's blocks are C-contiguous,
    so ``reshape(-1)`` is a view of them, as ``view(-1)`` of a tensor)."""
    if numpy:
        return np.empty(shape, dtype=numpy_dtype_from_wire(wire_dtype))
    import torch

    return torch.empty(shape, dtype=dtype_from_wire(wire_dtype))


def _progress_bar(progress: bool | None, total: int) -> Any:
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    from tqdm.auto import tqdm  # imported on use

    return tqdm(total=total, unit="slice", desc="jacobian")


def parse_jacobian(response: pb.JacobianResponse, call: CallInputs) -> JacobianResult:
    outputs = decode_tensors(response.outputs, numpy=call.numpy)
    blocks = [decode_tensor(t, name=f"jacobian[{k}]", numpy=call.numpy)
              for k, t in enumerate(response.jacobian)]  # fmt: skip
    tree = output_tree(response, len(outputs))
    return JacobianResult(
        output=tree.unflatten(list(outputs)),
        jacobian=call.jacobian(blocks, tree),
        metrics=DerivativeMetrics.from_wire(response.metrics),
    )


def _flat_blocks(jacobian: Any) -> list[Any]:
    """The blocks of a laid-out Jacobian (any nesting), row-major, each flattened."""
    leaves = flatten(jacobian, what="jacobian", convert=_as_is)[0]
    return [block.reshape(-1) for block in leaves]


def _as_is(value: Any) -> Any:
    """A NumPy array as a leaf (anything else is not one)."""
    if not isinstance(value, np.ndarray):
        raise TypeError("not an array")
    return value
