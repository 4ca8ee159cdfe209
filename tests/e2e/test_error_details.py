"""Errors as data: every error the server returns carries ``google.rpc.Status`` details
(``ErrorInfo`` with a stable reason, ``RetryInfo`` on retryable ones, ``BadRequest`` for a
bad field), read through a raw gRPC stub and through the SDK, whose retries follow the
details and never the message text. Each error is provoked for real on a loopback server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import torch
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from conftest import running_server
from jacserve.client import Client, InvalidArgument, NotFound, ResourceExhausted
from jacserve.client._retry import RetryPolicy
from jacserve.client.errors import DeadlineExceeded, JacserveError, Unauthenticated
from jacserve.codec import encode_tensors
from jacserve.server.errors import Reason
from jacserve.server.rpc import abort_with_details, rich_status
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import SinExp, Slow, archive_of

TOKEN = "s3cret-for-errors"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
X = torch.randn(3, dtype=torch.float64)
DOMAIN = "jacserve.dev"


class _Prints(torch.nn.Module):
    """Calls prim::Print, which is not on the default operator allowlist."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print(x)
        return x


class _Chain(torch.nn.Module):
    """A wide elementwise chain: one reverse pass needs far more than 10 kB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(8):
            x = torch.sin(x) * x
        return x


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    models = tmp_path_factory.mktemp("models")
    with running_server(str(models), workers=1, max_queue=1, auth_token_file=str(tokens)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Client]:
    with Client(server.target, token=TOKEN, timeout=60, retry=RetryPolicy.off()) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[pb_grpc.JacobianServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.JacobianServiceStub(channel)


@pytest.fixture(scope="module")
def sin_id(client: Client) -> str:
    return client.upload(archive_of(SinExp(), (X,), "torchscript"))


def _details(error: grpc.RpcError) -> dict[str, Any]:
    """The details of a raw call's error; ``from_call`` also checks that the Status
    agrees with the call's code and message."""
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in ("ErrorInfo", "RetryInfo", "BadRequest", "RequestInfo"):
            message = getattr(error_details_pb2, kind)()
            if detail.Unpack(message):
                found[kind] = message
    assert found["ErrorInfo"].domain == DOMAIN
    return found


def test_an_unknown_model_is_model_not_found_with_its_id(client, stub):
    missing = "f" * 64
    with pytest.raises(grpc.RpcError) as raw:
        stub.GetModel(pb.GetModelRequest(model_id=missing), metadata=AUTH)
    assert raw.value.code() == grpc.StatusCode.NOT_FOUND
    found = _details(raw.value)
    assert found["ErrorInfo"].reason == "MODEL_NOT_FOUND"
    assert found["ErrorInfo"].metadata["model_id"] == missing
    assert "RetryInfo" not in found
    request_id = dict(raw.value.trailing_metadata())["x-request-id"]
    assert found["RequestInfo"].request_id == request_id  # the trailer is still there
    with pytest.raises(NotFound) as info:
        client.jacobian(missing, X)
    assert info.value.reason == "MODEL_NOT_FOUND" and info.value.metadata["model_id"] == missing
    assert info.value.retry_delay is None and info.value.request_id


def test_a_disallowed_operator_is_operator_not_allowed_naming_it(client):
    with pytest.raises(InvalidArgument, match="prim::Print") as info:
        client.upload(torch.jit.script(_Prints()))
    assert info.value.reason == "OPERATOR_NOT_ALLOWED"
    assert info.value.metadata["operator"] == "prim::Print"
    assert info.value.metadata["operators"] == "prim::Print"


def test_an_archive_that_is_not_one_is_archive_rejected(stub):
    upload = iter([pb.UploadModelRequest(chunk=b"this is not a zip archive")])
    with pytest.raises(grpc.RpcError) as raw:
        stub.UploadModel(upload, metadata=AUTH)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(raw.value)["ErrorInfo"].reason == "ARCHIVE_REJECTED"


def test_a_budget_below_one_pass_is_budget_too_small_with_the_bytes_needed(client):
    x = torch.randn(4096, dtype=torch.float64)
    model_id = client.upload(archive_of(_Chain(), (x,), "torchscript"))
    with pytest.raises(ResourceExhausted) as info:
        client.jacobian(model_id, x, mode="reverse", max_memory_bytes=10_000)
    error = info.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "BUDGET_TOO_SMALL" and error.retry_delay is None
    assert int(error.metadata["bytes_needed"]) > int(error.metadata["budget_bytes"]) == 10_000
    assert error.metadata["mode"] == "reverse"
    assert list(error.field_violations) == ["options.max_memory_bytes"]


def test_a_malformed_tensor_is_invalid_tensor_naming_the_field(stub, sin_id):
    bad = pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[3], data=bytes(7))
    request = pb.JvpRequest(
        function=pb.FunctionRef(model_id=sin_id),
        primals=encode_tensors([X]),
        tangents=[bad],
    )
    with pytest.raises(grpc.RpcError) as raw:
        stub.Jvp(request, metadata=AUTH)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tangents[0]: expected 24 bytes" in raw.value.details()  # the message as before
    found = _details(raw.value)
    assert found["ErrorInfo"].reason == "INVALID_TENSOR"
    (violation,) = found["BadRequest"].field_violations
    assert violation.field == "tangents[0]" and "24 bytes" in violation.description


def test_a_call_without_a_token_is_unauthenticated_with_details(stub, server):
    with pytest.raises(grpc.RpcError) as raw:
        stub.ListModels(pb.ListModelsRequest())
    assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _details(raw.value)["ErrorInfo"].reason == "UNAUTHENTICATED"
    with (
        Client(server.target, token="wrong", timeout=30) as wrong,
        pytest.raises(Unauthenticated) as info,
    ):
        wrong.list_models()
    assert info.value.reason == "UNAUTHENTICATED"


def test_a_full_queue_is_queue_full_with_retry_info_and_the_sdk_rides_it_out(server, client):
    slow = client.upload(archive_of(Slow(200_000), (X,), "torchscript"))
    client.get_model(slow)  # its worker is loaded
    outcomes: list[object] = []

    def call(sdk: Client) -> None:
        try:
            outcomes.append(sdk.jvp(slow, X, X).jvp)
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call, args=(client,)) for _ in range(3)]
    for t in threads:  # one runs, one waits, one finds the queue full
        t.start()
        time.sleep(0.15)
    for t in threads:
        t.join(timeout=60)
    (refused,) = [o for o in outcomes if isinstance(o, JacserveError)]
    assert isinstance(refused, ResourceExhausted) and refused.reason == "QUEUE_FULL"
    assert refused.retry_delay == pytest.approx(0.2)
    assert refused.metadata["max_queue"] == "1" and refused.metadata["queued"] == "1"

    outcomes.clear()
    patient = RetryPolicy(max_attempts=60, initial_backoff=0.05, max_backoff=0.5)
    with Client(server.target, token=TOKEN, timeout=60, retry=patient) as sdk:
        threads = [threading.Thread(target=call, args=(sdk,)) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.15)
        for t in threads:
            t.join(timeout=60)
    assert all(isinstance(o, torch.Tensor) for o in outcomes), outcomes


def test_a_deadline_that_overran_before_is_deadline_too_short(client):
    slow = client.upload(archive_of(Slow(20_000_000), (X,), "torchscript"))
    client.get_model(slow)  # its worker is loaded
    refused = None
    for _ in range(4):  # after two overruns of 1.5 s, a call with 0.6 s left is hopeless
        with pytest.raises(DeadlineExceeded):
            client.jvp(slow, X, X, timeout=1.5)
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            client.jvp(slow, X, X, timeout=0.6)
        if time.monotonic() - began < 0.5:  # the server refused it at once
            refused = info.value
            break
        assert info.value.reason == ""  # the client's own deadline: gRPC sends no details
    assert refused is not None and refused.reason == "DEADLINE_TOO_SHORT"
    assert float(refused.metadata["seconds_needed"]) > float(refused.metadata["seconds_left"])


def test_an_unexpected_exception_is_internal():
    status = rich_status(RuntimeError("bug"), grpc.StatusCode.INTERNAL, "Jvp: internal", "r1")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == Reason.INTERNAL
    assert status.code == grpc.StatusCode.INTERNAL.value[0]


# -- the SDK's retries follow the details ---------------------------------------------------


class _Scripted(pb_grpc.JacobianServiceServicer):
    """ListModels fails with the scripted errors, one per call, then answers."""

    def __init__(self, failures: list[tuple[grpc.StatusCode, str, Exception | None]]) -> None:
        self.failures = failures
        self.calls: list[float] = []

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self.calls.append(time.monotonic())
        if self.failures:
            code, message, error = self.failures.pop(0)
            if error is None:
                context.abort(code, message)  # no details, as gRPC's own errors
            abort_with_details(context, code, message, error, "r")
        return pb.ListModelsResponse()


@pytest.fixture()
def scripted() -> Iterator[tuple[_Scripted, str]]:
    servicer = _Scripted([])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_JacobianServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0)


def _full(delay: float) -> Exception:
    from jacserve.server import errors

    return errors.ResourceExhausted("busy", reason=Reason.QUEUE_FULL, retry_after=delay)


def test_the_sdk_retries_a_queue_full_after_its_retry_delay(scripted):
    servicer, target = scripted
    servicer.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, "ListModels: busy", _full(0.3))]
    policy = RetryPolicy(initial_backoff=0.01, jitter=0.0)
    with Client(target, timeout=30, retry=policy) as sdk:
        assert sdk.list_models() == []
    assert len(servicer.calls) == 2
    assert servicer.calls[1] - servicer.calls[0] >= 0.29  # RetryInfo, not the 0.01 s backoff


def test_the_sdk_ignores_message_text_when_deciding_to_retry(scripted):
    from jacserve.server import errors

    servicer, target = scripted
    too_large = errors.ResourceExhausted("queued", reason=Reason.MESSAGE_TOO_LARGE)
    servicer.failures = [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "3 requests are already queued", too_large)
    ]
    with (
        Client(target, timeout=30, retry=RetryPolicy(initial_backoff=0.01)) as sdk,
        pytest.raises(ResourceExhausted) as info,
    ):
        sdk.list_models()
    assert info.value.reason == "MESSAGE_TOO_LARGE" and len(servicer.calls) == 1
    servicer.calls.clear()
    # no details: gRPC's own refusal; a small request is not a size refusal, so it is the
    # concurrency limit, retried whatever the text says
    servicer.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger", None)]
    with Client(target, timeout=30, retry=RetryPolicy(initial_backoff=0.01)) as sdk:
        assert sdk.list_models() == []
    assert len(servicer.calls) == 2


def test_the_sdk_retries_any_error_with_retry_info(scripted):
    from jacserve.server import errors

    servicer, target = scripted
    restarting = errors.WorkerFailed(
        "restarting", reason=Reason.WORKER_UNAVAILABLE, retry_after=0.05
    )
    servicer.failures = [(grpc.StatusCode.INTERNAL, "ListModels: restarting", restarting)] * 2
    with Client(target, timeout=30, retry=RetryPolicy(initial_backoff=0.01)) as sdk:
        assert sdk.list_models() == []
    assert len(servicer.calls) == 3


def test_details_survive_the_status_proto_round_trip():
    error = InvalidArgument("x", reason="INVALID_TENSOR", field_violations={"inputs[0]": "bad"})
    assert error.field_violations == {"inputs[0]": "bad"}
    status = status_pb2.Status(code=3, message="x")
    assert rpc_status.to_status(status).code == grpc.StatusCode.INVALID_ARGUMENT
