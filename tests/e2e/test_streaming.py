"""StreamJacobian: a Jacobian larger than the message limit arrives in slices, none above
the limit, and the client holds about one copy of it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch
from torch.func import jacrev

from conftest import running_server
from jacserve.client import Client, ResourceExhausted
from jacserve.server.app import RunningServer
from tests.models import MLP, archive_of

LIMIT = 4 << 20  # the server's message limit here: 4 MiB


@pytest.fixture(scope="module")
def small_messages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = str(tmp_path_factory.mktemp("stream-models"))
    with running_server(folder, workers=1, max_message_bytes=LIMIT) as running:
        yield running


def test_a_jacobian_above_the_message_limit_streams_in_slices(small_messages):
    x = torch.randn(1500)
    tanh = archive_of(torch.nn.Tanh(), (x,), "torchscript")  # 1500×1500 float32: 9 MB
    with Client(small_messages.target, timeout=120, max_message_bytes=LIMIT) as client:
        with pytest.raises(ResourceExhausted, match="message limit"):
            client.jacobian(tanh, x, stream=False)
        slices: list[tuple[int, int, int]] = []
        result = client.jacobian(tanh, x, max_block_bytes=1 << 20)
        torch.testing.assert_close(result.jacobian, torch.diag(1 - torch.tanh(x) ** 2))
        client.jacobian(tanh, x, on_slice=lambda b, s, v: slices.append((b, s, v.numel())))
    assert sum(count for _, _, count in slices) == 1500 * 1500
    assert max(count for _, _, count in slices) * 4 <= LIMIT
    starts = [s for _, s, _ in slices]
    assert starts == sorted(starts) and starts[0] == 0


def test_streamed_tuple_outputs_and_inputs_keep_their_layout(small_messages):
    class TwoInTwoOut(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a * b.sum(), torch.sin(a)[:2]

    a, b = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    model = TwoInTwoOut()
    with Client(small_messages.target, timeout=60, max_message_bytes=LIMIT) as client:
        got = client.jacobian(archive_of(model, (a, b), "torchscript"), (a, b), max_block_bytes=16)
    want = torch.autograd.functional.jacobian(model, (a, b))
    for got_row, want_row in zip(got.jacobian, want, strict=True):
        for g, w in zip(got_row, want_row, strict=True):
            torch.testing.assert_close(g, w)


CLIENT_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from jacserve.client import Client

    def status_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    target, limit, n, stream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    x = torch.randn(n)
    with Client(target, timeout=300, max_message_bytes=limit) as client:
        model_id = client.upload(torch.jit.script(torch.nn.Tanh()))
        client.jacobian(model_id, torch.randn(8), stream=stream)  # warm: connection, imports
        open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
        before = status_kib("VmRSS")
        result = client.jacobian(model_id, x, stream=stream, max_block_bytes=1 << 20)
        after = status_kib("VmHWM")
        error = float((result.jacobian.diagonal() - (1 - torch.tanh(x) ** 2)).abs().max())
    print(json.dumps({"peak_growth_bytes": (after - before) * 1024, "error": error}))
    """
)


def test_the_client_holds_one_copy_plus_one_slice(tmp_path):
    n = 3000  # 3000×3000 float32: 36 MB
    size = n * n * 4
    with running_server(str(tmp_path), workers=1, max_message_bytes=64 << 20) as server:
        growth = {}
        for stream in ("1", "0"):
            out = subprocess.run(
                [sys.executable, "-c", CLIENT_MEMORY_PROBE, server.target, str(64 << 20), str(n), stream],
                capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
            report = json.loads(out.stdout.strip().splitlines()[-1])
            # loose: this test is about memory (exactness is tested above); about one run in
            # five shows a 9.7e-5 deviation here, in both paths — an open finding
            assert report["error"] < 1e-3, report
            growth[stream] = report["peak_growth_bytes"]
    # the Jacobian, a slice, and what gRPC buffers in flight (measured 10–16 MB)
    assert growth["1"] < size + (24 << 20), growth
    assert growth["1"] < growth["0"] / 2, growth  # one big message: bytes, copy, tensor


def test_streamed_and_single_message_jacobians_are_bit_identical(small_messages):
    torch.manual_seed(3)
    model = MLP(700, 32, 600, torch.float32)
    x = torch.randn(700)
    with Client(small_messages.target, timeout=120, max_message_bytes=LIMIT) as client:
        model_id = client.upload(archive_of(model, (x,), "torchscript"))
        for mode in ("forward", "reverse"):
            whole = client.jacobian(model_id, x, mode=mode, stream=False).jacobian
            for block in (1 << 16, 100_003, 1 << 20):  # slice edges fall everywhere
                sliced = client.jacobian(model_id, x, mode=mode, stream=True, max_block_bytes=block)
                assert torch.equal(sliced.jacobian, whole), (mode, block)
    torch.testing.assert_close(whole, jacrev(model)(x))
