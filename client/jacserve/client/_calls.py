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

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from jacserve.client._assembly import (
    JacobianAssembler,
    SliceCallback,
    jacobian_key,
    parse_jacobian,
    result_bytes,
)
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
    encode_tensors,
)
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
        return parse_jacobian(response, call)

    return Prepared("Jacobian", request, parse, example_point(inputs, batched), inputs=call)


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
    """A factory of the upload stream for ``data`` (a fresh iterator per attempt); its
    ``largest_message_bytes`` is the size of its largest message (the first).

    >>> factory = upload_chunks(b"abcde", 2)
    >>> chunks = list(factory())
    >>> [c.chunk for c in chunks], chunks[0].expected_model_id[:8]
    ([b'ab', b'cd', b'e'], '36bbe50e')
    >>> factory.largest_message_bytes == chunks[0].ByteSize()
    True
    """
    model_id = hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(chunk=data[:chunk_bytes], expected_model_id=model_id)
        for start in range(chunk_bytes, len(data), chunk_bytes):
            yield pb.UploadModelRequest(chunk=data[start : start + chunk_bytes])

    first = pb.UploadModelRequest(chunk=data[:chunk_bytes], expected_model_id=model_id)
    chunks.largest_message_bytes = first.ByteSize()  # type: ignore[attr-defined]
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
