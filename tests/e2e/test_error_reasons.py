"""The error reasons that test_error_details.py does not provoke, each for real on a
loopback server, read through a raw stub and through the SDK: MESSAGE_TOO_LARGE (a
request above either side's message limit, a response above the server's),
MODEL_QUARANTINED, CALL_TOO_LONG, and gRPC's own ``--max-concurrent-rpcs`` refusal
(no details: the SDK tells it from a size refusal by the request's size and retries it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import running_server
from jacserve.client import Client, FailedPrecondition, ResourceExhausted
from jacserve.client._retry import RetryPolicy
from jacserve.client.errors import DeadlineExceeded, JacserveError
from jacserve.codec import encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests import hostile
from tests.models import SinExp, Slow, archive_of

LIMIT = 64 << 10  # the limited server's --max-message-bytes
X = torch.randn(3, dtype=torch.float64)
BIG = torch.randn(LIMIT // 8, dtype=torch.float64)  # one such tensor alone fills a message


class _Repeat(torch.nn.Module):
    """A 3-vector in, 15 000 numbers out: the response outgrows a 64 KiB message."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(5000)


@dataclass(frozen=True)
class _Recording(RetryPolicy):
    """The SDK's policy, keeping every error it was asked about (to see the retries)."""

    seen: list[JacserveError] = field(default_factory=list, compare=False, hash=False)

    def should_retry(self, error: JacserveError, attempt: int) -> bool:
        """Record ``error``, then decide as :class:`RetryPolicy` does."""
        self.seen.append(error)
        return super().should_retry(error, attempt)


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    stop = time.monotonic() + limit
    while not condition():
        if time.monotonic() > stop:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _details(error: grpc.RpcError) -> dict[str, Any]:
    """The google.rpc details of a raw call's error, by kind."""
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in ("ErrorInfo", "RetryInfo", "BadRequest"):
            message = getattr(error_details_pb2, kind)()
            if detail.Unpack(message):
                found[kind] = message
    assert found["ErrorInfo"].domain == "jacserve.dev"
    return found


def _jvp(model_id: str, x: torch.Tensor) -> pb.JvpRequest:
    return pb.JvpRequest(
        function=pb.FunctionRef(model_id=model_id),
        primals=encode_tensors([x]),
        tangents=encode_tensors([x]),
    )


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One worker, 64 KiB messages."""
    folder = str(tmp_path_factory.mktemp("limited"))
    with running_server(folder, workers=1, max_message_bytes=LIMIT) as s:
        yield s


@pytest.fixture(scope="module")
def client(limited: Any) -> Iterator[Client]:
    """A client whose limit matches the server's, without retries."""
    with Client(limited.target, timeout=60, max_message_bytes=LIMIT, retry=RetryPolicy.off()) as c:
        yield c


@pytest.fixture(scope="module")
def stub(limited: Any) -> Iterator[pb_grpc.JacobianServiceStub]:
    with grpc.insecure_channel(limited.target) as channel:
        yield pb_grpc.JacobianServiceStub(channel)


@pytest.fixture(scope="module")
def sin_id(client: Client) -> str:
    return client.upload(archive_of(SinExp(), (X,), "torchscript"))


# -- MESSAGE_TOO_LARGE ------------------------------------------------------------------------


def test_a_request_above_the_servers_limit_is_message_too_large_and_not_retried(
    limited, stub, sin_id
):
    with pytest.raises(grpc.RpcError) as raw:  # gRPC refuses it before the server's code runs
        stub.Jvp(_jvp(sin_id, BIG), timeout=30)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(raw.value) is None  # so it carries no details
    policy = _Recording(initial_backoff=0.01)
    with (
        Client(limited.target, timeout=60, retry=policy) as sdk,  # 512 MiB: only the server's
        pytest.raises(ResourceExhausted) as info,
    ):
        sdk.jvp(sin_id, BIG, BIG)
    error = info.value
    assert error.reason == "MESSAGE_TOO_LARGE" and error.retry_delay is None
    assert int(error.metadata["limit_bytes"]) == LIMIT
    assert int(error.metadata["bytes_needed"]) > LIMIT
    assert len(policy.seen) == 1  # the SDK learnt the server's limit and did not retry


def test_a_request_above_the_clients_own_limit_is_message_too_large(limited, sin_id):
    policy = _Recording(initial_backoff=0.01)
    with (
        Client(limited.target, timeout=60, max_message_bytes=4096, retry=policy) as sdk,
        pytest.raises(ResourceExhausted) as info,
    ):
        sdk.jvp(sin_id, torch.randn(1000, dtype=torch.float64), torch.randn(1000))
    assert info.value.reason == "MESSAGE_TOO_LARGE"
    assert info.value.metadata["limit_bytes"] == "4096" and len(policy.seen) == 1


def test_upload_chunks_above_the_servers_limit_are_message_too_large(limited):
    archive = archive_of(torch.nn.Linear(200, 100), (torch.ones(200),), "torchscript")
    assert len(archive) > LIMIT  # the SDK's 1 MiB chunk is above the server's limit
    policy = _Recording(initial_backoff=0.01)
    with (
        Client(limited.target, timeout=60, retry=policy) as sdk,
        pytest.raises(ResourceExhausted) as info,
    ):
        sdk.upload(archive)
    assert info.value.reason == "MESSAGE_TOO_LARGE"
    assert [e.reason for e in policy.seen if e.code == info.value.code] == ["MESSAGE_TOO_LARGE"]
    with Client(limited.target, timeout=60, max_message_bytes=LIMIT) as sdk:
        assert len(sdk.upload(archive)) == 64  # chunks that fit go through


def test_a_response_above_the_servers_limit_is_message_too_large_with_details(client, stub):
    repeat = client.upload(torch.jit.script(_Repeat()))
    with pytest.raises(grpc.RpcError) as raw:
        stub.Jvp(_jvp(repeat, X), timeout=30)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = _details(raw.value)
    assert found["ErrorInfo"].reason == "MESSAGE_TOO_LARGE" and "RetryInfo" not in found
    assert int(found["ErrorInfo"].metadata["bytes_needed"]) > LIMIT
    with pytest.raises(ResourceExhausted) as info:
        client.jvp(repeat, X, X)
    assert info.value.reason == "MESSAGE_TOO_LARGE"
    assert info.value.metadata["limit_bytes"] == str(LIMIT)


# -- gRPC's own concurrency limit ---------------------------------------------------------------


def test_the_concurrency_limit_has_no_details_and_the_sdk_retries_it(tmp_path):
    # One RPC in flight at a time. gRPC may still count a call that has just answered,
    # so even calls made one after another can be refused: setup calls retry.
    patient_setup = RetryPolicy(max_attempts=1000, initial_backoff=0.01, max_backoff=0.05)
    with (
        running_server(str(tmp_path), workers=1, max_concurrent_rpcs=1) as crowded,
        Client(crowded.target, timeout=60, retry=patient_setup) as setup,
        Client(crowded.target, timeout=60, retry=RetryPolicy.off()) as client,
        grpc.insecure_channel(crowded.target) as channel,
    ):
        endless = setup.upload(archive_of(Slow(10**10), (X,), "torchscript"))
        setup.get_model(endless)  # its worker is loaded
        _holds_the_slot(crowded.target, client, pb_grpc.JacobianServiceStub(channel), endless)


def _holds_the_slot(
    target: str, client: Client, stub: pb_grpc.JacobianServiceStub, endless: str
) -> None:
    """While an endless call holds the one RPC slot: the refusal as it comes, then the
    SDK riding it out until the slot is freed."""
    calls = [stub.Jvp.future(_jvp(endless, X), timeout=600)]
    refusals: list[JacserveError] = []

    def refused_while_busy() -> bool:
        if calls[-1].done():  # refused itself (a call that had just answered still counted)
            calls.append(stub.Jvp.future(_jvp(endless, X), timeout=600))
            return False
        refusals.clear()
        try:
            client.list_models()
        except ResourceExhausted as error:
            refusals.append(error)
        return bool(refusals) and not calls[-1].done()

    try:
        _wait_for(refused_while_busy, "a call refused by --max-concurrent-rpcs")
        busy = calls[-1]
        assert refusals[0].reason == "" and refusals[0].retry_delay is None  # no details
        with pytest.raises(grpc.RpcError) as raw:
            stub.ListModels(pb.ListModelsRequest(), timeout=30)
        assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc_status.from_call(raw.value) is None

        policy = _Recording(max_attempts=10_000, initial_backoff=0.01, max_backoff=0.05)
        outcome: list[object] = []
        with Client(target, timeout=120, retry=policy) as patient:
            waiting = threading.Thread(target=lambda: outcome.append(patient.list_models()))
            waiting.start()
            _wait_for(lambda: len(policy.seen) >= 2, "the SDK to retry the refused call")
            assert not busy.done()  # the slot was taken all along
            busy.cancel()  # frees the slot: the next try gets through
            waiting.join(timeout=120)
        assert [m.model_id for m in outcome[0]]  # type: ignore[union-attr]
        assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED for e in policy.seen)
        assert {e.reason for e in policy.seen} == {""}
    finally:
        for call in calls:
            call.cancel()


# -- MODEL_QUARANTINED --------------------------------------------------------------------------


def test_an_archive_whose_loader_crashed_is_model_quarantined(client, stub):
    crashing = hostile.deeply_nested()
    with pytest.raises(JacserveError) as first:
        client.upload(crashing)
    assert first.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert first.value.reason == "ARCHIVE_REJECTED"
    with pytest.raises(FailedPrecondition) as again:  # never loaded again
        client.upload(crashing)
    model_id = again.value.metadata["model_id"]
    assert again.value.reason == "MODEL_QUARANTINED" and again.value.retry_delay is None
    with pytest.raises(FailedPrecondition) as info:
        client.jacobian(model_id, torch.randn(3))
    assert info.value.reason == "MODEL_QUARANTINED"
    assert info.value.metadata["model_id"] == model_id
    with pytest.raises(grpc.RpcError) as raw:
        stub.GetModel(pb.GetModelRequest(model_id=model_id), timeout=30)
    assert raw.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = _details(raw.value)
    assert found["ErrorInfo"].reason == "MODEL_QUARANTINED" and "RetryInfo" not in found
    assert found["ErrorInfo"].metadata["model_id"] == model_id


# -- CALL_TOO_LONG ------------------------------------------------------------------------------


def test_a_call_past_max_call_seconds_is_call_too_long(tmp_path):
    with (
        running_server(str(tmp_path), workers=1, max_call_seconds=1.0) as capped,
        Client(capped.target, timeout=120, retry=RetryPolicy.off()) as sdk,
        grpc.insecure_channel(capped.target) as channel,
    ):
        endless = sdk.upload(archive_of(Slow(10**10), (X,), "torchscript"))
        with pytest.raises(DeadlineExceeded) as info:
            sdk.jvp(endless, X, X, timeout=120)  # the caller would wait two minutes
        error = info.value
        assert error.reason == "CALL_TOO_LONG" and error.retry_delay is None
        assert error.metadata["max_call_seconds"] == "1"
        with pytest.raises(grpc.RpcError) as raw:  # no deadline of the caller's at all
            pb_grpc.JacobianServiceStub(channel).Jvp(_jvp(endless, X))
        assert raw.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        found = _details(raw.value)
        assert found["ErrorInfo"].reason == "CALL_TOO_LONG" and "RetryInfo" not in found
