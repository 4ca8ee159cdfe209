"""Tensors ⇄ ``jacserve.v1.Tensor`` messages, shared by the client and the server.

A ``Tensor`` message holds a dtype, a shape and the raw little-endian, C-order bytes of
the elements: the layout of the Open Inference Protocol's raw contents. Decoding checks
everything before it allocates: a known dtype, at most :data:`MAX_RANK` dimensions,
non-negative dimensions, an element cap, and a byte length equal to
``numel × itemsize``.

>>> import torch
>>> msg = encode_tensor(torch.arange(6, dtype=torch.float32).reshape(2, 3))
>>> list(msg.shape), len(msg.data)
([2, 3], 24)
>>> decode_tensor(msg)
tensor([[0., 1., 2.],
        [3., 4., 5.]])
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from jacserve.v1 import jacobian_service_pb2 as pb

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_RANK",
    "SUPPORTED_DTYPES",
    "TensorCodecError",
    "as_array",
    "as_tensor",
    "decode_array",
    "decode_tensor",
    "decode_tensors",
    "dtype_from_wire",
    "dtype_name",
    "dtype_to_wire",
    "encode_tensor",
    "encode_tensors",
    "is_torch_tensor",
    "numpy_dtype_from_wire",
    "torch_loaded",
]

# NOTE: [Torch is optional here]
# The client needs torch only for torch tensors and modules, so this module imports it on
# first use: a NumPy user's ``import jacserve.client`` never loads it. A value can only be
# a torch tensor once torch is in ``sys.modules``, which is how values are told apart.

_NAMES = {
    pb.DTYPE_FLOAT16: "float16",
    pb.DTYPE_BFLOAT16: "bfloat16",
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_FLOAT64: "float64",
    pb.DTYPE_INT32: "int32",
    pb.DTYPE_INT64: "int64",
    pb.DTYPE_BOOL: "bool",
}
_ITEMSIZE = {pb.DTYPE_BFLOAT16: 2} | {
    k: np.dtype(v).itemsize for k, v in _NAMES.items() if v != "bfloat16"
}
_NUMPY_BY_WIRE: dict[int, np.dtype] = {k: np.dtype(v) for k, v in _NAMES.items() if v != "bfloat16"}
_WIRE_BY_NAME = {v: k for k, v in _NAMES.items()}

SUPPORTED_DTYPES: tuple[torch.dtype, ...]
"""The torch dtypes that travel over the wire (made on first use: it imports torch)."""

MAX_RANK = 32
"""Most dimensions a decoded tensor may have."""

if sys.byteorder != "little":  # every platform torch ships wheels for is little-endian
    raise ImportError("jacserve.codec needs a little-endian host: tensors travel as raw LE bytes")


class TensorCodecError(ValueError):
    """A tensor or ``Tensor`` message that cannot be encoded or decoded; the text says why."""


def torch_loaded() -> bool:
    """Whether torch has been imported in this process (see NOTE: [Torch is optional here]).

    >>> isinstance(torch_loaded(), bool)
    True
    """
    return sys.modules.get("torch") is not None


def is_torch_tensor(value: Any) -> bool:
    """Whether ``value`` is a ``torch.Tensor``, without importing torch.

    >>> is_torch_tensor(np.zeros(2))
    False
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


@cache
def _torch_tables() -> tuple[dict[int, torch.dtype], dict[torch.dtype, int]]:
    import torch

    by_wire = {k: getattr(torch, v) for k, v in _NAMES.items()}
    return by_wire, {v: k for k, v in by_wire.items()}


def __getattr__(name: str) -> Any:
    if name == "SUPPORTED_DTYPES":  # the torch dtypes that travel over the wire
        return tuple(_torch_tables()[1])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: Any) -> str:
    """A torch or NumPy dtype's name without the ``torch.`` prefix.

    >>> dtype_name(np.dtype("float32"))
    'float32'
    """
    return str(dtype).removeprefix("torch.")


def dtype_to_wire(dtype: Any) -> int:
    """Return the ``jacserve.v1.Dtype`` value for a torch or NumPy dtype.

    >>> dtype_to_wire(np.dtype("float64")) == pb.DTYPE_FLOAT64
    True
    """
    if isinstance(dtype, np.dtype):
        wire = _WIRE_BY_NAME.get(dtype.name) if dtype.isnative or dtype.itemsize == 1 else None
    else:
        wire = _torch_tables()[1].get(dtype) if torch_loaded() else None
    if wire is None:
        supported = ", ".join(_NAMES.values())
        raise TensorCodecError(
            f"dtype {dtype_name(dtype)} is not supported; use one of {supported}"
        )
    return wire


def _wire_name(value: int) -> str:
    return pb.Dtype.Name(value) if value in pb.Dtype.values() else str(value)


def dtype_from_wire(value: int) -> torch.dtype:
    """Return the torch dtype for a ``jacserve.v1.Dtype`` value (imports torch).

    >>> dtype_from_wire(pb.DTYPE_INT32)
    torch.int32
    """
    if value not in _NAMES:
        raise TensorCodecError(
            f"dtype field is {_wire_name(value)}; "
            "set it to one of DTYPE_FLOAT16/BFLOAT16/FLOAT32/FLOAT64/INT32/INT64/BOOL"
        )
    return _torch_tables()[0][value]


def numpy_dtype_from_wire(value: int) -> np.dtype:
    """Return the NumPy dtype for a ``jacserve.v1.Dtype`` value.

    Raises:
        TensorCodecError: an unknown value, or bfloat16 (NumPy has no such dtype).

    >>> numpy_dtype_from_wire(pb.DTYPE_FLOAT32)
    dtype('float32')
    """
    if value == pb.DTYPE_BFLOAT16:
        raise TensorCodecError(
            "dtype bfloat16 has no NumPy equivalent; install torch and pass torch tensors "
            "to receive bfloat16 results, or run the model in float32"
        )
    dtype = _NUMPY_BY_WIRE.get(value)
    if dtype is None:
        dtype_from_wire(value)  # raises with the list of supported dtypes
    return dtype


def as_array(value: Any, *, name: str = "tensor") -> np.ndarray:
    """Turn a NumPy array or Python/NumPy scalar into a C-contiguous NumPy array whose
    dtype travels over the wire; Python numbers get torch's dtypes (bool, int64, float32).

    Raises:
        TensorCodecError: for other types (torch tensors included) and unsupported dtypes.

    >>> as_array(1.5).dtype, as_array(np.arange(3)).dtype
    (dtype('float32'), dtype('int64'))
    """
    if isinstance(value, bool):
        array = np.asarray(value, dtype=np.bool_)
    elif isinstance(value, int):
        array = np.asarray(value, dtype=np.int64)
    elif isinstance(value, float):
        array = np.asarray(value, dtype=np.float32)
    elif isinstance(value, np.ndarray | np.generic):
        array = np.ascontiguousarray(value)
    else:
        raise TensorCodecError(
            f"{name}: expected a torch.Tensor or numpy.ndarray; got {type(value).__name__}"
        )
    try:
        dtype_to_wire(array.dtype)
    except TensorCodecError:
        raise TensorCodecError(f"{name}: NumPy dtype {array.dtype} is not supported") from None
    return array


def as_tensor(value: Any, *, name: str = "tensor") -> torch.Tensor:
    """Turn a torch tensor, NumPy array or Python number into a CPU torch tensor (imports
    torch).

    Args:
        value: a ``torch.Tensor``, ``numpy.ndarray`` or NumPy/Python scalar.
        name: how error messages refer to the value.

    Returns:
        A detached CPU tensor (no copy when ``value`` already is one).

    Raises:
        TensorCodecError: for other types and unsupported dtypes.

    >>> as_tensor(np.zeros((2,), dtype=np.float64)).dtype
    torch.float64
    """
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray | np.generic):
        try:
            tensor = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as exc:
            raise TensorCodecError(f"{name}: NumPy dtype {value.dtype} is not supported") from exc
    elif isinstance(value, bool | int | float):
        tensor = torch.tensor(value)
    else:
        raise TensorCodecError(
            f"{name}: expected a torch.Tensor or numpy.ndarray; got {type(value).__name__}"
        )
    if tensor.is_complex() or tensor.dtype not in _torch_tables()[1]:
        dtype_to_wire(tensor.dtype)  # raises with the list of supported dtypes
    return tensor.cpu()


def encode_tensor(value: Any, *, name: str = "tensor", into: pb.Tensor | None = None) -> pb.Tensor:
    """Encode a torch tensor, NumPy array or Python number as a ``jacserve.v1.Tensor``
    message (torch is needed only for torch tensors).

    ``into``: an empty message to fill (one in a response under construction) instead of a
    new one. Filling in place matters for large tensors: putting a finished message into
    another copies it again (15 ms for 16 MB with protobuf's upb backend, against 2 ms to
    fill it in place).

    >>> encode_tensor(np.array([1.0, 2.0])).data.hex()
    '000000000000f03f0000000000000040'
    """
    message = pb.Tensor() if into is None else into
    if is_torch_tensor(value):
        import torch

        tensor = as_tensor(value, name=name).contiguous()
        wire_dtype = dtype_to_wire(tensor.dtype)
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; the bits are the same
            array = tensor.view(torch.int16).numpy()
        else:
            array = tensor.numpy()
    else:
        array = as_array(value, name=name)
        wire_dtype = dtype_to_wire(array.dtype)
    message.dtype = wire_dtype
    message.shape.extend(array.shape)
    message.data = array.tobytes()
    return message


def encode_tensors(
    values: Sequence[Any], *, name: str = "tensors", into: Any = None
) -> list[pb.Tensor]:
    """Encode each value with :func:`encode_tensor`, naming them ``name[i]`` in errors;
    ``into``: a repeated ``Tensor`` field to add them to (no copy; see ``encode_tensor``).

    >>> [list(t.shape) for t in encode_tensors([torch.zeros(2), torch.zeros(())])]
    [[2], []]
    >>> request = pb.JacobianRequest()
    >>> _ = encode_tensors([torch.zeros(3)], into=request.inputs)
    >>> list(request.inputs[0].shape)
    [3]
    """
    return [
        encode_tensor(v, name=f"{name}[{i}]", into=None if into is None else into.add())
        for i, v in enumerate(values)
    ]


def _checked(message: pb.Tensor, name: str, max_elements: int | None) -> list[int]:
    """The message's shape, after checking its dtype, rank, dimensions and byte length."""
    if message.dtype not in _NAMES:
        raise TensorCodecError(
            f"{name}: dtype field is {_wire_name(message.dtype)}; "
            "set it to one of DTYPE_FLOAT16/BFLOAT16/FLOAT32/FLOAT64/INT32/INT64/BOOL"
        )
    if len(message.shape) > MAX_RANK:
        raise TensorCodecError(
            f"{name}: expected at most {MAX_RANK} dimensions; got {len(message.shape)}"
        )
    shape = list(message.shape)
    if any(d < 0 for d in shape):
        raise TensorCodecError(f"{name}: dimensions must be >= 0; got shape {shape}")
    numel = math.prod(shape)
    if max_elements is not None and numel > max_elements:
        raise TensorCodecError(
            f"{name}: shape {shape} has {numel} elements, above the limit of {max_elements}"
        )
    itemsize = _ITEMSIZE[message.dtype]
    expected = numel * itemsize
    if len(message.data) != expected:
        raise TensorCodecError(
            f"{name}: expected {expected} bytes for shape {shape} of {_NAMES[message.dtype]} "
            f"({numel} elements × {itemsize} bytes); got {len(message.data)} bytes"
        )
    return shape


def decode_tensor(
    message: pb.Tensor, *, name: str = "tensor", max_elements: int | None = None,
    numpy: bool = False,
) -> Any:  # fmt: skip
    """Decode a ``jacserve.v1.Tensor`` message into a new, writable CPU tensor.

    Args:
        message: the message to decode.
        name: how error messages refer to the tensor (for example ``"primals[1]"``).
        max_elements: refuse tensors with more elements than this, before allocating.
        numpy: return a ``numpy.ndarray`` (see :func:`decode_array`) instead of a torch
            tensor; torch is then not needed.

    Returns:
        A tensor (or array) that owns its memory (one copy of the message's bytes).

    Raises:
        TensorCodecError: unknown dtype, more than :data:`MAX_RANK` dimensions, negative
            dimension, too many elements, or a byte length that does not match the shape.

    >>> decode_tensor(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2], data=bytes(7)))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    TensorCodecError: tensor: expected 8 bytes for shape [2] of float32 (2 elements × 4 bytes); got 7 bytes
    """
    if numpy:
        return decode_array(message, name=name, max_elements=max_elements)
    import torch

    shape = _checked(message, name, max_elements)
    dtype = _torch_tables()[0][message.dtype]
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(message.data), dtype=dtype).reshape(shape)


def decode_array(
    message: pb.Tensor, *, name: str = "tensor", max_elements: int | None = None
) -> np.ndarray:
    """Decode a ``jacserve.v1.Tensor`` message into a new, writable NumPy array, with the
    checks of :func:`decode_tensor`; bfloat16 is refused (NumPy has no such dtype).

    >>> decode_array(encode_tensor(np.arange(3, dtype=np.int32)))
    array([0, 1, 2], dtype=int32)
    """
    shape = _checked(message, name, max_elements)
    try:
        dtype = numpy_dtype_from_wire(message.dtype)
    except TensorCodecError as exc:
        raise TensorCodecError(f"{name}: {exc}") from None
    return np.frombuffer(message.data, dtype=dtype).reshape(shape).copy()


def decode_tensors(
    messages: Sequence[pb.Tensor], *, name: str = "tensors", max_elements: int | None = None,
    numpy: bool = False,
) -> tuple[Any, ...]:  # fmt: skip
    """Decode each message with :func:`decode_tensor`, naming them ``name[i]`` in errors.

    >>> decode_tensors([encode_tensor(np.ones(2))], numpy=True)
    (array([1., 1.]),)
    """
    return tuple(
        decode_tensor(m, name=f"{name}[{i}]", max_elements=max_elements, numpy=numpy)
        for i, m in enumerate(messages)
    )
