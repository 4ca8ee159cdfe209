"""What the sync and async clients send and how they read the answers — one place.

Each ``prepare_*`` function turns user arguments into a :class:`Prepared` call: the RPC's
name, its request message (the model reference is filled in by the client) and a parser
from the response message to the typed result. The clients differ only in transport.

>>> import torch
>>> prepared = prepare_jvp(torch.ones(3), torch.ones(3))
>>> prepared.rpc, len(prepared.request.primals)
('Jvp', 1)
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from jacserve.client._results import (
    DerivativeMetrics,
    GradientsResult,
    HessianResult,
    HvpResult,
    JacobianResult,
    JvpResult,
    TensorOrTuple,
    VjpResult,
)
from jacserve.client._structure import (
    CallInputs,
    call_inputs,
    cotangent_leaves,
    example_point,
    output_tree,
)
from jacserve.codec import (
    decode_tensor,
    decode_tensors,
    dtype_from_wire,
    encode_tensors,
    is_torch_tensor,
    numpy_dtype_from_wire,
)
from jacserve.pytree import flatten
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = [
    "MODES",
    "JacobianAssembler",
    "Prepared",
    "SliceCallback",
    "jacobian_key",
    "prepare_gradients",
    "prepare_hessian",
    "prepare_hvp",
    "prepare_jacobian",
    "prepare_jvp",
    "prepare_stream_jacobian",
    "prepare_vjp",
    "result_bytes",
    "upload_chunks",
]

R = TypeVar("R")
MODES = {
    "auto": pb.DERIVATIVE_MODE_AUTO,
    "forward": pb.DERIVATIVE_MODE_FORWARD,
    "reverse": pb.DERIVATIVE_MODE_REVERSE,
}


@dataclass(frozen=True)
class Prepared(Generic[R]):
    """One derivative call, ready to send once its ``request.function`` is set;
    ``example`` is one point's inputs, to export a plain module or function with."""

    rpc: str
    request: Any
    parse: Callable[[Any], R]
    example: tuple[Any, ...] = ()
    streaming: bool = False  # parse then takes an iterator of response messages
    inputs: CallInputs | None = None  # how results over the inputs are laid out

    @property
    def function(self) -> pb.FunctionRef:
        """The model reference to fill in before sending."""
        inner = getattr(self.request, "request", None)
        return inner.function if inner is not None else self.request.function


def as_sequence(value: Any) -> tuple[bool, list[Any]]:
    """(whether the user passed a tuple/list, the items)."""
    if isinstance(value, tuple | list):
        return True, list(value)
    return False, [value]


def structure_outputs(tensors: Sequence[Any], as_tuple: bool) -> TensorOrTuple:
    return tuple(tensors) if as_tuple else tensors[0]


def structured_outputs(response: Any, tensors: Sequence[Any]) -> Any:
    """A response's outputs (or values shaped like them) in the method's output structure."""
    return output_tree(response, len(tensors)).unflatten(list(tensors))


def _with_inputs(request: Any, call: CallInputs, field: str = "inputs") -> None:
    encode_tensors(call.leaves, name=field, into=getattr(request, field))
    request.wrt.extend(call.wire_wrt)
    if call.wire_tree is not None:
        request.input_tree.CopyFrom(call.wire_tree)


def verify_directions(verify: int | bool) -> int:
    """Directions for ``options.verify_directions``: ``True`` means 3, ``False`` 0.

    >>> verify_directions(True), verify_directions(5)
    (3, 5)
    """
    if isinstance(verify, bool):
        return 3 if verify else 0
    return int(verify)


def prepare_jvp(
    primals: Any, tangents: Any, *, wrt: Sequence[int] | None = None, batched: bool = False,
    device: str = "", verify: int | bool = 0,
) -> Prepared[JvpResult]:  # fmt: skip
    """A ``Jvp`` call (arguments as :meth:`jacserve.client.Client.jvp`)."""
    call = call_inputs(primals, wrt)
    request = pb.JvpRequest(
        batched=batched,
        options=pb.ComputeOptions(device=device, verify_directions=verify_directions(verify)),
    )
    np_out = call.numpy
    tangent_leaves = call.flatten_like(tangents, "tangents")
    encode_tensors(tangent_leaves, name="tangents", into=request.tangents)
    _with_inputs(request, call, "primals")

    def parse(response: pb.JvpResponse) -> JvpResult:
        return JvpResult(
            output=structured_outputs(response, decode_tensors(response.outputs, numpy=np_out)),
            jvp=structured_outputs(response, decode_tensors(response.jvp, numpy=np_out)),
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("Jvp", request, parse, example_point(primals, batched=False), inputs=call)


def prepare_vjp(
    primals: Any, cotangents: Any, *, wrt: Sequence[int] | None = None, batched: bool = False,
    device: str = "", verify: int | bool = 0,
) -> Prepared[VjpResult]:  # fmt: skip
    """A ``Vjp`` call (arguments as :meth:`jacserve.client.Client.vjp`)."""
    call = call_inputs(primals, wrt)
    leaves, tree = cotangent_leaves(cotangents, call.convert)
    np_out = call.numpy
    request = pb.VjpRequest(
        batched=batched,
        options=pb.ComputeOptions(device=device, verify_directions=verify_directions(verify)),
    )
    encode_tensors(leaves, name="cotangents", into=request.cotangents)
    _with_inputs(request, call, "primals")
    if tree is not None:
        request.cotangent_tree.CopyFrom(tree)

    def parse(response: pb.VjpResponse) -> VjpResult:
        return VjpResult(
            output=structured_outputs(response, decode_tensors(response.outputs, numpy=np_out)),
            vjp=call.arrange(decode_tensors(response.vjp, numpy=np_out), "vjp"),
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("Vjp", request, parse, example_point(primals, batched=False), inputs=call)


def prepare_jacobian(
    inputs: Any, *, mode: str = "auto", wrt: Sequence[int] | None = None, batched: bool = False,
    max_memory_bytes: int = 0, chunk_size: int = 0, device: str = "", verify: int | bool = 0,
) -> Prepared[JacobianResult]:  # fmt: skip
    """A ``Jacobian`` call (arguments as :meth:`jacserve.client.Client.jacobian`).

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"jacobian: expected mode 'auto', 'forward' or 'reverse'; got {mode!r}")
    call = call_inputs(inputs, wrt)
    request = pb.JacobianRequest(
        mode=MODES[mode],
        batched=batched,
        options=pb.ComputeOptions(
            max_memory_bytes=max_memory_bytes,
            chunk_size=chunk_size,
            device=device,
            verify_directions=verify_directions(verify),
        ),
    )
    _with_inputs(request, call)

    def parse(response: pb.JacobianResponse) -> JacobianResult:
        return _parse_jacobian(response, call)

    return Prepared("Jacobian", request, parse, example_point(inputs, batched), inputs=call)


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
            self._complete = _parse_jacobian(message.complete, self._inputs)
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


def _parse_jacobian(response: pb.JacobianResponse, call: CallInputs) -> JacobianResult:
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


def prepare_stream_jacobian(
    inputs: Any, *, mode: str = "auto", wrt: Sequence[int] | None = None, batched: bool = False,
    max_memory_bytes: int = 0, chunk_size: int = 0, device: str = "", max_block_bytes: int = 0,
    progress: bool | None = None, on_slice: SliceCallback | None = None, verify: int | bool = 0,
) -> Prepared[JacobianAssembler]:  # fmt: skip
    """A ``StreamJacobian`` call; ``parse`` makes the assembler to feed the messages to."""
    unary = prepare_jacobian(
        inputs, mode=mode, wrt=wrt, batched=batched, max_memory_bytes=max_memory_bytes,
        chunk_size=chunk_size, device=device, verify=verify,
    )  # fmt: skip
    call = call_inputs(inputs, wrt)
    request = pb.StreamJacobianRequest(request=unary.request, max_block_bytes=max_block_bytes)
    return Prepared(
        "StreamJacobian",
        request,
        lambda _: JacobianAssembler(call, progress, on_slice),
        unary.example,
        streaming=True,
        inputs=call,
    )


def prepare_gradients(
    inputs: Any, cotangent: Any | None = None, *, parameters: Sequence[str] | None = None,
    device: str = "", verify: int | bool = 0,
) -> Prepared[GradientsResult]:  # fmt: skip
    """A ``ParameterGradients`` call (arguments as
    :meth:`jacserve.client.Client.parameter_gradients`)."""
    call = call_inputs(inputs)
    np_out = call.numpy
    leaves, tree = ([], None) if cotangent is None else cotangent_leaves(cotangent, call.convert)
    request = pb.ParameterGradientsRequest(
        parameters=list(parameters or ()),
        options=pb.ComputeOptions(device=device, verify_directions=verify_directions(verify)),
    )
    encode_tensors(call.leaves, name="inputs", into=request.inputs)
    encode_tensors(leaves, name="cotangents", into=request.cotangents)
    if call.wire_tree is not None:
        request.input_tree.CopyFrom(call.wire_tree)
    if tree is not None:
        request.cotangent_tree.CopyFrom(tree)

    def parse(response: pb.ParameterGradientsResponse) -> GradientsResult:
        return GradientsResult(
            output=structured_outputs(response, decode_tensors(response.outputs, numpy=np_out)),
            gradients={
                g.name: decode_tensor(g.tensor, name=f"gradients[{g.name!r}]", numpy=np_out)
                for g in response.gradients
            },
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("ParameterGradients", request, parse, example_point(inputs, batched=False))


def upload_chunks(data: bytes, chunk_bytes: int) -> Callable[[], Iterator[pb.UploadModelRequest]]:
    """A factory of the upload stream for ``data`` (a fresh iterator per attempt).

    >>> chunks = list(upload_chunks(b"abcde", 2)())
    >>> [c.chunk for c in chunks], chunks[0].expected_model_id[:8]
    ([b'ab', b'cd', b'e'], '36bbe50e')
    """
    model_id = hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(chunk=data[:chunk_bytes], expected_model_id=model_id)
        for start in range(chunk_bytes, len(data), chunk_bytes):
            yield pb.UploadModelRequest(chunk=data[start : start + chunk_bytes])

    return chunks


def prepare_hvp(
    inputs: Any, vectors: Any, *, wrt: Sequence[int] | None = None, batched: bool = False,
    gauss_newton: bool = False, device: str = "",
) -> Prepared[HvpResult]:  # fmt: skip
    """An ``Hvp`` call (arguments as :meth:`jacserve.client.Client.hvp`)."""
    call = call_inputs(inputs, wrt)
    np_out = call.numpy
    request = pb.HvpRequest(
        batched=batched,
        gauss_newton=gauss_newton,
        options=pb.ComputeOptions(device=device),
    )
    encode_tensors(call.flatten_like(vectors, "vectors"), name="vectors", into=request.vectors)
    _with_inputs(request, call)

    def parse(response: pb.HvpResponse) -> HvpResult:
        return HvpResult(
            output=structured_outputs(response, decode_tensors(response.outputs, numpy=np_out)),
            hvp=call.arrange(decode_tensors(response.hvp, numpy=np_out), "hvp"),
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("Hvp", request, parse, example_point(inputs, batched=False))


def prepare_hessian(
    inputs: Any, *, wrt: Sequence[int] | None = None, chunk_size: int = 0, device: str = "",
) -> Prepared[HessianResult]:  # fmt: skip
    """A ``Hessian`` call (arguments as :meth:`jacserve.client.Client.hessian`)."""
    call = call_inputs(inputs, wrt)
    request = pb.HessianRequest(options=pb.ComputeOptions(chunk_size=chunk_size, device=device))
    _with_inputs(request, call)

    def parse(response: pb.HessianResponse) -> HessianResult:
        blocks = [decode_tensor(t, name=f"hessian[{k}]", numpy=call.numpy)
                  for k, t in enumerate(response.hessian)]  # fmt: skip
        outputs = decode_tensors(response.outputs, numpy=call.numpy)
        tree = output_tree(response, len(outputs))
        return HessianResult(
            output=tree.unflatten(list(outputs)),
            hessian=call.hessian(blocks, tree),
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("Hessian", request, parse, example_point(inputs, batched=False))
