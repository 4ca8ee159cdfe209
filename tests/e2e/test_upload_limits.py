"""UploadModel cannot exhaust the frontend: stalled streams are capped and cut, uploads
go to disk rather than memory, and the store has a quota. Real servers, raw gRPC stubs
where a stream has to misbehave, the SDK elsewhere."""

from __future__ import annotations

import hashlib
import pathlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import running_server
from jacserve.client import Client, ResourceExhausted
from jacserve.server.app import RunningServer
from jacserve.server.registry.store import STAGING
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import Affine, archive_of

X = torch.randn(3, dtype=torch.float64)
STALLS = 40
HANG_GUARD = 60.0  # seconds; generous bounds on waits that must end, never a measurement


def _archive(n: int) -> bytes:
    return archive_of(
        Affine(n, 2, torch.float64), (torch.zeros(n, dtype=torch.float64),), "torchscript"
    )


def _staged(running: RunningServer) -> list[pathlib.Path]:
    return sorted((running.store.directory / STAGING).iterdir())


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def _stalled(release: threading.Event, chunks: Iterable[bytes] = (b"PK",)):
    """Send ``chunks``, then go silent until ``release`` is set."""
    for chunk in chunks:
        yield pb.UploadModelRequest(chunk=chunk)
    release.wait()


def _readers() -> list[threading.Thread]:
    """The server's upload reader threads (it runs in this process)."""
    return [t for t in threading.enumerate() if t.name == "jacserve-upload-reader"]


def _code_and_details(future: grpc.Future) -> tuple[grpc.StatusCode, str]:
    error = future.exception(timeout=HANG_GUARD)
    assert error is not None, "the upload was expected to fail"
    return error.code(), error.details()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # lets the client's request threads finish


@pytest.mark.parametrize(
    ("settings", "admitted", "fragment"),
    [
        ({}, 4, "--max-uploads-per-peer 4"),
        ({"max_workers": 8, "max_uploads_per_peer": STALLS}, 2, "a quarter of --max-workers"),
    ],
    ids=["per-peer-limit", "global-limit"],
)
def test_stalled_uploads_do_not_block_other_calls(tmp_path, release, settings, admitted, fragment):
    with (
        running_server(str(tmp_path), workers=1, **settings) as running,
        Client(running.target, timeout=HANG_GUARD) as other,
        grpc.insecure_channel(running.target) as channel,
    ):
        model_id = other.upload(_archive(3))
        upload = pb_grpc.JacobianServiceStub(channel).UploadModel
        stalls = [upload.future(_stalled(release), timeout=HANG_GUARD) for _ in range(STALLS)]
        _wait_until(lambda: sum(f.done() for f in stalls) == STALLS - admitted, "refusals")
        _wait_until(lambda: len(_staged(running)) == admitted, "the admitted uploads to stage")
        refused = [_code_and_details(f) for f in stalls if f.done()]
        assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all(fragment in details for _, details in refused), refused[0]

        # the idle timeout (30 s) has not cut the stalls: these are served beside them
        with grpc.insecure_channel(running.target) as fresh:
            info = pb_grpc.JacobianServiceStub(fresh).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=20
            )
            health = health_pb2_grpc.HealthStub(fresh).Check(
                health_pb2.HealthCheckRequest(), timeout=20
            )
        assert info.uploads_allowed and health.status == health_pb2.HealthCheckResponse.SERVING
        assert other.jacobian(model_id, X, timeout=20).jacobian.shape == (2, 3)
        with pytest.raises(ResourceExhausted, match=fragment):  # same address: refused at once
            other.upload(_archive(4), timeout=20)
        held = [f for f in stalls if not f.done()]
        assert len(held) == admitted

        for future in held:
            future.cancel()
        _wait_until(lambda: not _staged(running), "cancelled uploads' staging files to go")
        assert other.jacobian(model_id, X, timeout=20).jacobian.shape == (2, 3)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Iterator[RunningServer]:
    """A server that cuts an upload after one idle second."""
    with running_server(
        str(tmp_path_factory.mktemp("quick")), workers=1, upload_idle_seconds=1
    ) as r:
        yield r


def test_stalled_uploads_are_cut_after_the_idle_timeout(quick, release):
    with grpc.insecure_channel(quick.target) as channel:
        upload = pb_grpc.JacobianServiceStub(channel).UploadModel
        stalls = [upload.future(_stalled(release), timeout=HANG_GUARD) for _ in range(4)]
        for future in stalls:  # each within the idle timeout + the hang guard
            code, details = _code_and_details(future)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "sent nothing for 1 s and was cut" in details
            assert "--upload-idle-seconds" in details
        _wait_until(lambda: not _staged(quick), "cut uploads' staging files to go")
        _wait_until(lambda: not _readers(), "the reader threads to exit with their calls")
        assert quick.store.ids() == []
        # the four slots of this client address are free again
        with Client(quick.target, timeout=HANG_GUARD) as client:
            assert client.upload(_archive(3)) in quick.store.ids()


def _peak_rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_stalled_large_uploads_stay_on_disk_not_in_memory(quick, release):
    """The review's case: three large uploads that stall (they held 300 MiB before, and
    glibc's arenas kept it; see NOTE: [Returning upload chunks]). The server runs in this
    process, so its peak RSS is this process's: reset first, and the client sends one
    reused buffer."""
    megabyte, megabytes, streams = b"\0" * (1 << 20), 100, 3
    sent = [0] * streams

    def chunks(i: int) -> Iterator[bytes]:
        for _ in range(megabytes):
            sent[i] += 1
            yield megabyte

    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS through /proc/self/clear_refs: {exc}")
    before = _peak_rss_bytes()
    with grpc.insecure_channel(quick.target) as channel:
        upload = pb_grpc.JacobianServiceStub(channel).UploadModel
        stalls = [
            upload.future(_stalled(release, chunks(i)), timeout=HANG_GUARD) for i in range(streams)
        ]
        codes = [_code_and_details(f)[0] for f in stalls]
    assert sent == [megabytes] * streams, "the server read every chunk before the stall"
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * streams
    grown = _peak_rss_bytes() - before
    assert grown < 100 << 20, f"peak RSS grew by {grown >> 20} MiB for 300 MiB of uploads"
    _wait_until(lambda: not _staged(quick), "staging files to go")


def test_a_truncated_upload_leaves_nothing_in_the_store(quick):
    data = _archive(5)
    full_id = hashlib.sha256(data).hexdigest()
    before = quick.store.ids()
    with grpc.insecure_channel(quick.target) as channel:
        upload = pb_grpc.JacobianServiceStub(channel).UploadModel
        messages = [
            pb.UploadModelRequest(chunk=data[:1000], expected_model_id=full_id),
            pb.UploadModelRequest(chunk=data[1000:-100]),
        ]
        with pytest.raises(grpc.RpcError) as error:
            upload(iter(messages), timeout=HANG_GUARD)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not the expected {full_id}" in error.value.details()
    assert "corrupted or truncated" in error.value.details()
    assert quick.store.ids() == before and _staged(quick) == []


def _raw_upload(target: str, data: bytes) -> pb.UploadModelResponse:
    with grpc.insecure_channel(target) as channel:
        upload = pb_grpc.JacobianServiceStub(channel).UploadModel
        return upload(iter([pb.UploadModelRequest(chunk=data)]), timeout=HANG_GUARD)


@pytest.mark.parametrize("limit", ["count", "bytes"])
def test_store_quota_refuses_then_accepts_after_delete(tmp_path, limit):
    first, largest, third = _archive(3), _archive(40), _archive(4)
    quota = (
        {"max_models": 2}
        if limit == "count"
        else {"max_store_bytes": len(first) + len(largest) + len(third) - 1}
    )
    flag = "--max-models" if limit == "count" else "--max-store-bytes"
    with (
        running_server(str(tmp_path), workers=1, **quota) as running,
        Client(running.target, timeout=HANG_GUARD) as client,
    ):
        kept = [client.upload(first), client.upload(largest)]
        with pytest.raises(ResourceExhausted) as error:
            client.upload(third)
        message = str(error.value)
        assert flag in message and "the model store is full" in message
        assert "DeleteModel" in message and "jacserve models delete" in message
        assert f"raise {flag}" in message
        assert sorted(running.store.ids()) == sorted(kept) and _staged(running) == []
        # the same bytes again (raw: the SDK would skip the upload) never count twice
        assert _raw_upload(running.target, largest).already_present

        client.delete_model(kept[0])
        new = client.upload(third)
        assert sorted(running.store.ids()) == sorted([kept[1], new]) and _staged(running) == []
        assert client.jacobian(new, torch.zeros(4, dtype=torch.float64)).jacobian.shape == (2, 4)
