"""One Jacobian split across three loopback replicas, one of them down."""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterator

import grpc
import pytest
import torch

from conftest import running_server
from jacserve.client import Client, InvalidArgument, RetryPolicy, Unavailable
from jacserve.server.app import RunningServer
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                running_server(str(tmp_path_factory.mktemp(f"replica-{i}")), workers=1)
            )
            for i in range(3)
        ]


class Wide(torch.nn.Module):
    """Two inputs, two outputs: n = 45 inputs, m = 60 outputs (45 forward or 60 reverse
    passes, whichever the server measures cheaper)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(40, 35, dtype=torch.float64))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(x.reshape(-1) @ self.w[: x.numel()]) * y.sum()
        return hidden.reshape(5, 7), torch.cat([hidden[:20], y.reshape(-1)]).sin()


X = torch.randn(4, 10, dtype=torch.float64)
Y = torch.randn(5, dtype=torch.float64)


def _reference(module: torch.nn.Module, *inputs: torch.Tensor):
    return torch.autograd.functional.jacobian(lambda *a: module(*a), inputs)


def _assert_same_structure(actual, expected) -> None:
    if isinstance(expected, torch.Tensor):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
        return
    assert isinstance(actual, tuple) and len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        _assert_same_structure(a, e)


def test_three_replicas_give_the_one_server_answer(replicas):
    model = torch.jit.script(Wide())
    with Client([r.target for r in replicas], timeout=120) as client:
        result = client.jacobian(model, (X, Y), shards=3)
    with Client(replicas[0].target, timeout=120) as single:
        alone = single.jacobian(model, (X, Y), stream=False)
    _assert_same_structure(result.jacobian, _reference(Wide(), X, Y))
    _assert_same_structure(result.jacobian, alone.jacobian)
    passes = {"forward": 45, "reverse": 60}[result.metrics.mode]  # auto: measured costs
    assert result.metrics.passes == passes
    windows = sorted((s.start, s.stop) for s in result.shards)
    assert windows[0][0] == 0 and windows[-1][1] == passes
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert {s.target for s in result.shards} == {r.target for r in replicas}


def _dead_target() -> str:
    """A loopback port nothing listens on (a replica that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_forward_mode_windows_are_columns(replicas):
    torch.manual_seed(2)
    tall = torch.nn.Sequential(torch.nn.Linear(6, 80), torch.nn.Tanh()).double()
    x = torch.randn(6, dtype=torch.float64)
    with Client([r.target for r in replicas], timeout=120) as client:
        result = client.jacobian(torch.jit.script(tall), x, mode="forward", shards=3)
    assert result.metrics.mode == "forward" and result.metrics.passes == 6
    torch.testing.assert_close(result.jacobian, torch.autograd.functional.jacobian(tall, x))


def test_a_replica_that_is_down_costs_time_not_the_answer(replicas):
    targets = [replicas[0].target, _dead_target(), replicas[2].target]
    with Client(targets, timeout=120) as client:
        result = client.jacobian(torch.jit.script(Wide()), (X, Y), shards=3)
    _assert_same_structure(result.jacobian, _reference(Wide(), X, Y))
    served = {s.target for s in result.shards}
    assert targets[1] not in served and served == {targets[0], targets[2]}
    assert sum(s.stop - s.start for s in result.shards) == result.metrics.passes
    assert any(targets[1] in s.failed_on for s in result.shards)


def test_a_small_jacobian_is_computed_whole_unless_asked(replicas):
    with Client([r.target for r in replicas], timeout=60) as client:
        result = client.jacobian(torch.jit.script(Wide()), (X, Y))
        again = client.jacobian(torch.jit.script(Wide()), (X, Y))  # no plan call this time
    assert result.shards == () and again.shards == ()
    _assert_same_structure(result.jacobian, _reference(Wide(), X, Y))


def test_a_bad_request_fails_at_once_on_every_replica(replicas):
    with (
        Client([r.target for r in replicas], timeout=60) as client,
        pytest.raises(InvalidArgument, match="input"),
    ):
        client.jacobian(torch.jit.script(Wide()), (X, Y.reshape(1, 5), Y), shards=3)


def test_no_live_replica_is_unavailable():
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    dead = [_dead_target(), _dead_target()]
    with Client(dead, timeout=20, retry=retry) as client, pytest.raises(Unavailable):
        client.jacobian(torch.jit.script(Wide()), (X, Y), shards=2)


def test_shards_over_one_target_split_the_passes_too(replicas):
    with Client(replicas[2].target, timeout=120) as client:
        result = client.jacobian(torch.jit.script(Wide()), (X, Y), shards=3)
    _assert_same_structure(result.jacobian, _reference(Wide(), X, Y))
    assert len(result.shards) > 1


@pytest.mark.parametrize(
    ("mode", "window", "message"),
    [
        (pb.DERIVATIVE_MODE_AUTO, (0, 4), "needs mode FORWARD or REVERSE"),
        (pb.DERIVATIVE_MODE_REVERSE, (50, 61), "outside the 60 reverse-mode passes"),
        (pb.DERIVATIVE_MODE_REVERSE, (5, 2), "0 <= start <= stop"),
    ],
)
def test_bad_pass_windows_are_invalid_argument(replicas, mode, window, message):
    from jacserve.codec import encode_tensors

    with Client(replicas[0].target, timeout=60) as client:
        model_id = client.upload(torch.jit.script(Wide()))
    request = pb.JacobianRequest(
        function=pb.FunctionRef(model_id=model_id, method="forward"),
        inputs=encode_tensors([X, Y]),
        mode=mode,
        passes=pb.PassRange(start=window[0], stop=window[1]),
    )
    with grpc.insecure_channel(replicas[0].target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Jacobian(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_async_client_splits_across_replicas_too(replicas):
    import asyncio

    from jacserve.client import AsyncClient

    targets = [replicas[0].target, _dead_target(), replicas[1].target]

    async def main():
        async with AsyncClient(targets, timeout=120) as client:
            return await client.jacobian(torch.jit.script(Wide()), (X, Y), shards=3)

    result = asyncio.run(main())
    _assert_same_structure(result.jacobian, _reference(Wide(), X, Y))
    served = {s.target for s in result.shards}
    assert served == {targets[0], targets[2]}
    assert sum(s.stop - s.start for s in result.shards) == result.metrics.passes
