"""Long calls finish, the server's maximum call length cuts them, cancelled calls stop.

See NOTE: [How long a call may run] in ``jacserve.server.service``. Ping intervals are
scaled down (milliseconds instead of the SDK's 60 s against the server's 30 s), so a
call of a second or two sees as many pings as a real one of many minutes.
"""

from __future__ import annotations

import os
import pathlib
import time
import urllib.request
from collections.abc import Callable

import grpc
import pytest
import torch

from conftest import running_server
from jacserve.client import Client, DeadlineExceeded
from jacserve.codec import encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc
from tests.models import Slow, archive_of

X = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
SERVER_PING_MS = 50  # the server accepts a ping on a silent connection every 50 ms
CLIENT_PING_MS = 100  # the client pings twice as slowly (the SDK: 60 s against 30 s)


def _jvp_request(model_id: str) -> pb.JvpRequest:
    return pb.JvpRequest(
        function=pb.FunctionRef(model_id=model_id),
        primals=encode_tensors([X]),
        tangents=encode_tensors([X]),
    )


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    stop = time.monotonic() + limit
    while not condition():
        if time.monotonic() > stop:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _cpu_seconds(pid: int) -> float:
    """CPU time worker ``pid`` has used (it grows once the worker computes the request)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_silent_call_outlives_many_client_pings(tmp_path):
    # With gRPC's default policy (a ping every 5 minutes at most, 2 strikes) the server
    # answers the third early ping with GOAWAY "too_many_pings" and the call is cut; a
    # misspelt argument name (grpc.http2.min_recv_ping_interval_without_data_ms, the
    # bug of issue #12) leaves that default in force, and this test fails.
    with running_server(
        str(tmp_path), workers=1, min_client_ping_interval_ms=SERVER_PING_MS
    ) as running:
        with Client(running.target, timeout=120) as client:
            slow_id = client.upload(archive_of(Slow(1_500_000), (X,), "torchscript"))
            client.get_model(slow_id)  # its worker is loaded: the call is all computing
        options = [
            ("grpc.keepalive_time_ms", CLIENT_PING_MS),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging however long it is silent
        ]
        with grpc.insecure_channel(running.target, options=options) as channel:
            stub = pb_grpc.JacobianServiceStub(channel)
            # 1.5 million interpreter steps: several seconds of silence, pings all along
            # (gRPC's client sends them about once a second whatever it is asked; 3 strikes,
            # some 3-4 s in, would cut it: a shorter call would not tell)
            response = stub.Jvp(_jvp_request(slow_id), timeout=120)
        assert list(response.jvp[0].shape) == [3]


def test_the_servers_maximum_call_length_wins_over_a_longer_deadline(tmp_path):
    with (
        running_server(str(tmp_path), workers=1, max_call_seconds=0.5) as running,
        Client(running.target, timeout=120) as client,
    ):
        endless = client.upload(archive_of(Slow(10**10), (X,), "torchscript"))
        quick = client.upload(archive_of(Slow(1), (X,), "torchscript"))
        with pytest.raises(DeadlineExceeded, match=r"--max-call-seconds") as info:
            client.jvp(endless, X, X, timeout=120)  # the caller would wait two minutes
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.jvp(quick, X, X).jvp.shape == (3,)  # the only worker slot is free again


def test_the_servers_maximum_is_off_by_default_and_a_callers_deadline_applies():
    from jacserve.server.config import ServerConfig

    assert ServerConfig().max_call_seconds == 0
    with pytest.raises(ValueError, match="max_call_seconds must be >= 0"):
        ServerConfig(max_call_seconds=-1)


def test_a_cancelled_call_stops_its_worker_and_frees_its_slot(tmp_path):
    with running_server(str(tmp_path), workers=1, metrics_port=0) as running:
        with Client(running.target, timeout=120) as client:
            endless = client.upload(archive_of(Slow(10**10), (X,), "torchscript"))
            quick = client.upload(archive_of(Slow(1), (X,), "torchscript"))
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.JacobianServiceStub(channel)
            future = stub.Jvp.future(_jvp_request(endless), timeout=600)
            _wait_for(lambda: bool(running.pool.pids(endless)), "the worker to start")
            (pid,) = running.pool.pids(endless)
            loaded = _cpu_seconds(pid)
            _wait_for(lambda: _cpu_seconds(pid) > loaded + 0.2, "the worker to compute")
            assert future.cancel()
        _wait_for(lambda: not _alive(pid), "the cancelled call's worker to be stopped")
        assert running.pool.pids(endless) == []
        with Client(running.target, timeout=60) as client:  # one worker slot: it is free
            assert client.jvp(quick, X, X).jvp.shape == (3,)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics")
        text = metrics.read().decode()
        assert 'jacserve_worker_restarts_total{reason="cancelled"} 1.0' in text
        assert 'reason="deadline"' not in text  # a cancel is not an overrun


def test_a_caller_that_disconnects_mid_call_stops_its_worker(tmp_path):
    with running_server(str(tmp_path), workers=1) as running:
        with Client(running.target, timeout=120) as client:
            endless = client.upload(archive_of(Slow(10**10), (X,), "torchscript"))
            quick = client.upload(archive_of(Slow(1), (X,), "torchscript"))
        channel = grpc.insecure_channel(running.target)
        future = pb_grpc.JacobianServiceStub(channel).Jvp.future(_jvp_request(endless), timeout=600)
        _wait_for(lambda: bool(running.pool.pids(endless)), "the worker to start")
        (pid,) = running.pool.pids(endless)
        loaded = _cpu_seconds(pid)
        _wait_for(lambda: _cpu_seconds(pid) > loaded + 0.2, "the worker to compute")
        channel.close()  # the caller goes away without cancelling
        assert future.done()
        _wait_for(lambda: not _alive(pid), "the abandoned call's worker to be stopped")
        with Client(running.target, timeout=60) as client:
            assert client.jvp(quick, X, X).jvp.shape == (3,)
