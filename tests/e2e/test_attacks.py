"""Hostile and broken input, each followed by a good request on the same server.

The archives come from ``tests/hostile.py``; every exploit would create a marker file if
it ever ran, and the marker must never appear. The server here has two workers, a 64 MiB
archive cap and an 8 MiB message cap, so that the limits are reachable in a test.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, InvalidArgument, NotFound, ResourceExhausted
from jacserve.client.errors import DeadlineExceeded, JacserveError
from jacserve.server.app import RunningServer
from tests import hostile

X = torch.randn(3)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = str(tmp_path_factory.mktemp("attacked-models"))
    with running_server(
        folder, workers=2, max_archive_bytes=64 << 20, max_message_bytes=8 << 20
    ) as s:
        yield s


@pytest.fixture(scope="module")
def client(attacked: RunningServer) -> Iterator[Client]:
    with Client(attacked.target, timeout=60, max_message_bytes=16 << 20) as c:
        yield c


def _still_serving(client: Client) -> None:
    result = client.jacobian(hostile.good_script(), X)
    assert result.jacobian.shape == (2, 3)


UPLOADS: dict[str, tuple[Callable[[pathlib.Path], bytes], type[JacserveError], str]] = {
    "random bytes": (lambda m: bytes(range(256)) * 40, InvalidArgument, "not a zip file"),
    "truncated archive": (lambda m: hostile.good_script()[:600], InvalidArgument, "not a zip"),
    "zip bomb": (lambda m: hostile.zip_bomb(200 << 20), ResourceExhausted, "uncompress to"),
    "duplicate entries": (lambda m: hostile.duplicate_entries(), InvalidArgument, "duplicate"),
    "TorchScript pickle exploit": (
        lambda m: hostile.script_with_pickled_data(str(m)),
        InvalidArgument,
        "could not load the archive",
    ),
    "torch.export pickled weight": (
        lambda m: hostile.export_with_pickled_weight(str(m)),
        InvalidArgument,
        "as a pickle",
    ),
    "torch.export AOTInductor": (
        lambda m: hostile.export_with_aotinductor(),
        InvalidArgument,
        "AOTInductor",
    ),
    "__setstate__": (lambda m: hostile.setstate_script(), InvalidArgument, "__setstate__"),
    "reads a file": (
        lambda m: hostile.file_reader("/etc/hostname"),
        InvalidArgument,
        "aten::from_file",
    ),
    "writes a file": (lambda m: hostile.file_writer(str(m)), InvalidArgument, "aten::save"),
    "prints": (lambda m: hostile.printer(), InvalidArgument, "prim::Print"),
    "memory-unsafe constructor": (
        lambda m: hostile.out_of_bounds_writer(),
        InvalidArgument,
        "aten::_sparse_coo_tensor_unsafe",
    ),
    "segfaults the loader": (
        lambda m: hostile.deeply_nested(),
        InvalidArgument,
        "crashed its worker (SIGSEGV)",
    ),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_hostile_archive_is_refused_and_the_server_keeps_serving(client, attacked, marker, case):
    build, error, words = UPLOADS[case]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        client.upload(build(marker))
    assert len(list(pathlib.Path(attacked.config.model_dir).glob("*.archive"))) <= 1
    _still_serving(client)


def test_pickled_sample_inputs_are_never_unpickled(client, marker):
    model_id = client.upload(hostile.export_with_pickled_sample_inputs(str(marker)))
    assert client.jacobian(model_id, torch.ones(3)).jacobian.shape == (2, 3)


def test_disallowed_op_in_an_inline_archive_is_refused(client):
    with pytest.raises(InvalidArgument, match="aten::_sparse_coo_tensor_unsafe"):
        client.jacobian(hostile.out_of_bounds_writer(), X)
    _still_serving(client)


def test_infinite_loop_is_cut_at_the_deadline_and_its_worker_stopped(client, attacked):
    model_id = client.upload(hostile.infinite_loop())
    looping = set(attacked.pool.pids(model_id))
    assert looping, "the upload left a warm worker for its archive"
    began = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.jvp(model_id, X, X, timeout=2)
    assert time.monotonic() - began < 3
    _still_serving(client)
    assert not looping & set(attacked.pool.pids()), "the looping worker still runs"
    with pytest.raises(DeadlineExceeded):  # a new worker, loaded again, for the next call
        client.jvp(model_id, X, X, timeout=2)


def test_memory_bomb_is_resource_exhausted(client):
    with pytest.raises(ResourceExhausted, match="out of memory"):
        client.jacobian(hostile.memory_bomb(), X)
    _still_serving(client)


def test_detach_is_reported_as_a_warning(client):
    result = client.jacobian(hostile.detacher(), X)
    assert any("detach" in w and "zero" in w for w in result.metrics.warnings)
    torch.testing.assert_close(result.jacobian, torch.diag(X))  # d(x * stop(x))/dx = diag(x)


def test_unknown_model_id_is_not_found(client):
    with pytest.raises(NotFound):
        client.jacobian("a" * 64, X)
    _still_serving(client)


def test_oversized_message_is_resource_exhausted(client):
    with pytest.raises(ResourceExhausted):
        client.jvp(hostile.good_script(), torch.randn(3 << 20), torch.randn(3 << 20))
    _still_serving(client)


@pytest.mark.parametrize(
    "x",
    [torch.tensor([float("nan"), 1.0, float("inf")]), torch.zeros(3)],
    ids=["nan and inf", "zeros"],
)
def test_non_finite_inputs_are_answered_and_counted(client, x):
    result = client.jacobian(hostile.good_script(), x)
    nonfinite = (~torch.isfinite(result.jacobian)).sum() + (~torch.isfinite(result.output)).sum()
    assert result.metrics.nonfinite_count == int(nonfinite)
    assert (result.metrics.nonfinite_count > 0) == (not bool(torch.isfinite(x).all()))


def test_zero_dim_and_empty_tensors(client):
    square = torch.jit.script(torch.nn.Tanh())
    scalar = client.jacobian(square, torch.tensor(0.5))
    torch.testing.assert_close(scalar.jacobian, 1 - torch.tanh(torch.tensor(0.5)) ** 2)
    empty = client.jacobian(square, torch.zeros(0))
    assert empty.jacobian.shape == (0, 0)
