"""The tensor codec: round trips for every dtype and shape, and every malformed message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jacserve.codec import (
    MAX_RANK,
    SUPPORTED_DTYPES,
    TensorCodecError,
    decode_tensor,
    encode_tensor,
)
from jacserve.v1 import jacobian_service_pb2 as pb

shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4)


def _random_tensor(shape: list[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if not dtype.is_floating_point:
        return torch.randint(-(2**30), 2**30, shape, generator=g, dtype=dtype)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)


@settings(max_examples=150, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(SUPPORTED_DTYPES), seed=st.integers(0, 2**16))
def test_round_trip_is_bit_exact(shape, dtype, seed):
    original = _random_tensor(shape, dtype, seed)
    message = pb.Tensor.FromString(encode_tensor(original).SerializeToString())
    decoded = decode_tensor(message)
    assert decoded.dtype == dtype and list(decoded.shape) == shape
    assert torch.equal(decoded.view(-1).view(torch.uint8), original.reshape(-1).view(torch.uint8))


@settings(max_examples=50, deadline=None)
@given(shape=shapes.filter(lambda s: len(s) >= 2), seed=st.integers(0, 2**16))
def test_non_contiguous_tensors_are_sent_in_c_order(shape, seed):
    original = _random_tensor(shape, torch.float32, seed).transpose(0, 1)
    torch.testing.assert_close(decode_tensor(encode_tensor(original)), original, rtol=0, atol=0)


def test_bytes_are_little_endian_c_order():
    message = encode_tensor(torch.tensor([[1, 2], [3, 4]], dtype=torch.int32))
    assert message.data == np.array([1, 2, 3, 4], dtype="<i4").tobytes()
    assert list(message.shape) == [2, 2] and message.dtype == pb.DTYPE_INT32


def test_numpy_arrays_and_scalars_are_accepted():
    decoded = decode_tensor(encode_tensor(np.arange(6, dtype=np.float64).reshape(2, 3)))
    assert decoded.dtype == torch.float64 and decoded.shape == (2, 3)
    assert decode_tensor(encode_tensor(2.5)).item() == 2.5


def test_decoded_tensors_are_writable_and_own_their_memory():
    message = encode_tensor(torch.ones(3))
    decoded = decode_tensor(message)
    decoded += 1  # no warning about read-only buffers, no change to the message
    assert decode_tensor(message).sum().item() == 3.0


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2], data=bytes(7)), "expected 8 bytes"),
        (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[-1], data=b""), "dimensions must be >= 0"),
        (pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1], data=bytes(4)), "DTYPE_UNSPECIFIED"),
        (pb.Tensor(dtype=99, shape=[1], data=bytes(4)), "dtype field is 99"),
        (pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[1000, 1000], data=b""), "above the limit"),
        (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1] * 33, data=bytes(4)), "at most 32 dim"),
        (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1] * 100_000, data=bytes(4)), "got 100000"),
        (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[0] * 40, data=b""), "at most 32 dim"),
    ],
)
def test_malformed_messages_are_rejected_with_the_reason(message, fragment):
    with pytest.raises(TensorCodecError, match="primals\\[0\\]") as info:
        decode_tensor(message, name="primals[0]", max_elements=10_000)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (torch.zeros(2, dtype=torch.complex64), "complex64 is not supported"),
        (torch.zeros(2, dtype=torch.uint8), "uint8 is not supported"),
        ("text", "expected a torch.Tensor or numpy.ndarray; got str"),
    ],
)
def test_unsupported_values_are_rejected(value, fragment):
    with pytest.raises(TensorCodecError, match=fragment):
        encode_tensor(value)


def test_the_rank_cap_is_inclusive():
    message = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1] * MAX_RANK, data=bytes(4))
    assert decode_tensor(message).dim() == MAX_RANK == 32


def test_the_rank_is_checked_before_the_elements_and_bytes():
    message = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2**40] * 33, data=b"")
    with pytest.raises(TensorCodecError, match="at most 32 dimensions; got 33"):
        decode_tensor(message, max_elements=10)
