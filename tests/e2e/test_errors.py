"""Each bad request gets the right status code and a message naming the problem;
the server keeps serving afterwards."""

from __future__ import annotations

import grpc
import pytest
import torch

from jacserve.client import Client, InvalidArgument, JacserveError, NotFound, ResourceExhausted
from jacserve.client.errors import FailedPrecondition
from jacserve.codec import encode_tensors
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import MLP, SinExp, archive_of

X = torch.randn(3, dtype=torch.float64)


@pytest.fixture(scope="module")
def ids(client: Client) -> dict[str, str]:
    return {
        "torchscript": client.upload(archive_of(MLP(3, 4, 2, torch.float64), (X,), "torchscript")),
        "torch_export": client.upload(
            archive_of(MLP(3, 4, 2, torch.float64), (X,), "torch_export")
        ),
        "no_params": client.upload(archive_of(SinExp(), (X,), "torchscript")),
    }


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.JacobianServiceStub(channel)


def _assert_still_serving(client: Client, ids: dict[str, str]) -> None:
    assert client.jacobian(ids["torchscript"], X).jacobian.shape == (2, 3)


BAD_SDK_CALLS = [
    ("unknown model id", NotFound, "is not registered", lambda c, ids: c.jacobian("f" * 64, X)),
    (
        "malformed model id",
        InvalidArgument,
        "64 lowercase hex",
        lambda c, ids: c.get_model("model.pt"),
    ),
    (
        "too many inputs",
        InvalidArgument,
        "takes 1 inputs (x); got 2",
        lambda c, ids: c.jacobian(ids["torchscript"], (X, X)),
    ),
    (
        "shape mismatch (torchscript)",
        InvalidArgument,
        "mat1 and mat2 shapes cannot be multiplied",
        lambda c, ids: c.jacobian(ids["torchscript"], torch.zeros(5, dtype=torch.float64)),
    ),
    (
        "shape mismatch (torch.export)",
        InvalidArgument,
        "input 0 (x): expected shape [3]",
        lambda c, ids: c.jacobian(ids["torch_export"], torch.zeros(5, dtype=torch.float64)),
    ),
    (
        "dtype mismatch (torch.export)",
        InvalidArgument,
        "expected dtype float64; got float32",
        lambda c, ids: c.jacobian(ids["torch_export"], torch.zeros(3)),
    ),
    (
        "dtype mismatch (torchscript)",
        InvalidArgument,
        "calling method 'forward' raised RuntimeError",
        lambda c, ids: c.jacobian(ids["torchscript"], torch.zeros(3)),
    ),
    (
        "non-floating input differentiated",
        InvalidArgument,
        "input 0 has dtype int64 and cannot be differentiated",
        lambda c, ids: c.jacobian(ids["no_params"], torch.zeros(3, dtype=torch.int64), wrt=[0]),
    ),
    (
        "wrt out of range",
        InvalidArgument,
        "wrt index 4 is out of range for 1 inputs",
        lambda c, ids: c.jacobian(ids["torchscript"], X, wrt=[4]),
    ),
    (
        "tangent shape",
        InvalidArgument,
        "tangents[0]: expected shape [3] and dtype float64",
        lambda c, ids: c.jvp(ids["torchscript"], X, torch.zeros(2, dtype=torch.float64)),
    ),
    (
        "cotangent count",
        InvalidArgument,
        "expected 1 cotangents (one per output); got 2",
        lambda c, ids: c.vjp(ids["torchscript"], X, (torch.zeros(2), torch.zeros(2))),
    ),
    (
        "unknown method",
        InvalidArgument,
        "the model has no method 'encode'; its methods are: forward",
        lambda c, ids: c.jacobian(ids["torchscript"], X, method="encode"),
    ),
    (
        "unknown parameter",
        InvalidArgument,
        "unknown name(s) ['nope']",
        lambda c, ids: c.parameter_gradients(
            ids["torchscript"], X, torch.ones(2, dtype=torch.float64), parameters=["nope"]
        ),
    ),
    (
        "gradient of a parameterless model",
        FailedPrecondition,
        "no floating-point parameters",
        lambda c, ids: c.parameter_gradients(
            ids["no_params"], X, torch.ones(3, dtype=torch.float64)
        ),
    ),
    (
        "non-scalar output without cotangent",
        InvalidArgument,
        "does not return a single scalar",
        lambda c, ids: c.parameter_gradients(ids["torchscript"], X),
    ),
    (
        "garbage archive",
        InvalidArgument,
        "archive is not a zip file",
        lambda c, ids: c.upload(b"this is not a model"),
    ),
]


@pytest.mark.parametrize(
    ("label", "error", "fragment", "call"), BAD_SDK_CALLS, ids=[b[0] for b in BAD_SDK_CALLS]
)
def test_bad_requests_get_the_right_code_and_message(client, ids, label, error, fragment, call):
    with pytest.raises(error) as info:
        call(client, ids)
    assert fragment in info.value.message, info.value.message
    assert info.value.code == error.code and info.value.request_id
    _assert_still_serving(client, ids)


BAD_WIRE_REQUESTS = [
    (
        "tensor bytes do not match the shape",
        "primals[0]: expected 24 bytes for shape [3] of float64",
        lambda ids: (
            "Jvp",
            pb.JvpRequest(
                function=pb.FunctionRef(model_id=ids["torchscript"]),
                primals=[pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=bytes(23))],
            ),
        ),
    ),
    (
        "negative dimension",
        "inputs[0]: dimensions must be >= 0",
        lambda ids: (
            "Jacobian",
            pb.JacobianRequest(
                function=pb.FunctionRef(model_id=ids["torchscript"]),
                inputs=[pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[-3], data=b"")],
            ),
        ),
    ),
    (
        "unspecified dtype",
        "inputs[0]: dtype field is DTYPE_UNSPECIFIED",
        lambda ids: (
            "Jacobian",
            pb.JacobianRequest(
                function=pb.FunctionRef(model_id=ids["torchscript"]),
                inputs=[pb.Tensor(shape=[3], data=bytes(24))],
            ),
        ),
    ),
    (
        "no function named",
        "expected model_id (from UploadModel) or an inline archive",
        lambda ids: ("Jacobian", pb.JacobianRequest(inputs=encode_tensors([X]))),
    ),
    (
        "unknown mode value",
        "mode: expected AUTO, FORWARD or REVERSE; got 17",
        lambda ids: (
            "Jacobian",
            pb.JacobianRequest(
                function=pb.FunctionRef(model_id=ids["torchscript"]),
                inputs=encode_tensors([X]),
                mode=17,
            ),
        ),
    ),
    (
        "inline archive that is not a model",
        "archive is not a zip file",
        lambda ids: (
            "Jacobian",
            pb.JacobianRequest(
                function=pb.FunctionRef(archive=b"\x00" * 10), inputs=encode_tensors([X])
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("label", "fragment", "build"), BAD_WIRE_REQUESTS, ids=[b[0] for b in BAD_WIRE_REQUESTS]
)
def test_malformed_wire_requests_are_invalid_arguments(client, ids, stub, label, fragment, build):
    rpc, request = build(ids)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, rpc)(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details() and info.value.details().startswith(rpc + ":")
    _assert_still_serving(client, ids)


def test_an_upload_corrupted_in_transit_is_refused(client, ids, stub):
    data = archive_of(MLP(3, 5, 2, torch.float64), (X,), "torchscript")
    chunks = iter([pb.UploadModelRequest(chunk=data[:-1], expected_model_id="a" * 64)])
    with pytest.raises(grpc.RpcError) as info:
        stub.UploadModel(chunks, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "corrupted or truncated" in info.value.details()


def test_size_limits_give_resource_exhausted(tmp_path):
    x = torch.zeros(64, dtype=torch.float64)
    wide = archive_of(MLP(64, 8, 64, torch.float64), (x,), "torchscript")  # J: 4096 elements
    narrow = archive_of(
        MLP(64, 8, 32, torch.float64), (x,), "torchscript"
    )  # J + output: 2080 × 8 bytes
    small = serve(
        ServerConfig(
            port=0,
            metrics_port=None,
            model_dir=str(tmp_path),
            max_archive_bytes=len(wide) + 1000,
            max_message_bytes=10_000,
            max_tensor_elements=3000,
        )
    )
    try:
        with Client(small.target, timeout=30, max_message_bytes=10_000) as c:
            with pytest.raises(ResourceExhausted, match="--max-archive-bytes"):
                c.upload(wide + bytes(2000))  # over the cap: refused while it streams
            with pytest.raises(ResourceExhausted, match="n\\*m = 64\\*64 = 4096 elements"):
                c.jacobian(c.upload(wide), x)
            narrow_id = c.upload(narrow)
            with pytest.raises(
                ResourceExhausted, match=r"16640 bytes of tensors.*--max-message-bytes"
            ):
                c.jacobian(narrow_id, x, stream=False)  # one message: above the limit
            assert c.jacobian(narrow_id, x).jacobian.shape == (32, 64)  # streamed: fits
            assert c.jvp(narrow_id, x, torch.ones(64, dtype=torch.float64)).jvp.shape == (32,)
    finally:
        small.stop(grace=0)


def test_unreachable_server_is_unavailable():
    with Client("127.0.0.1:1", timeout=5) as c, pytest.raises(JacserveError) as info:
        c.list_models()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


class _Slow(torch.nn.Module):
    """Many small matrix products: a forward pass of tens of milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(400):
            x = torch.tanh(self.weight @ x)
        return x


def test_a_call_past_its_deadline_gets_deadline_exceeded_and_the_server_goes_on(client, ids):
    from jacserve.client import DeadlineExceeded

    x = torch.randn(256)
    slow_id = client.upload(archive_of(_Slow(), (x,), "torchscript"))
    with pytest.raises(DeadlineExceeded) as info:
        client.jacobian(slow_id, x, timeout=0.05)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_still_serving(client, ids)
