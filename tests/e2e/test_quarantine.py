"""An archive whose loading crashes or hangs is quarantined: never loaded again by
itself, not at start-up, not by ListModels; the server restarts cleanly with the store."""

from __future__ import annotations

import pathlib
import shutil

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, FailedPrecondition, InvalidArgument
from jacserve.server.registry.registry import model_id_of
from tests import hostile

X = torch.randn(3)


def _plant(folder: pathlib.Path, data: bytes) -> str:
    """Put an archive straight into the store, as an older server or an operator might."""
    model_id = model_id_of(data)
    (folder / f"{model_id}.archive").write_bytes(data)
    return model_id


def test_a_stored_archive_that_crashes_its_loader_is_quarantined_at_start_up(tmp_path):
    crashing = _plant(tmp_path, hostile.deeply_nested())
    good = _plant(tmp_path, hostile.good_script())
    with running_server(str(tmp_path)) as running, Client(running.target, timeout=60) as client:
        assert [m.model_id for m in client.list_models()] == [good]
        with pytest.raises(FailedPrecondition, match="quarantined"):
            client.jacobian(crashing, X)
        assert client.jacobian(good, X).jacobian.shape == (2, 3)
    assert (tmp_path / "quarantine" / f"{crashing}.archive").exists()
    assert not (tmp_path / f"{crashing}.archive").exists()
    # the next start-up loads nothing: the good model's description is remembered
    with running_server(str(tmp_path)) as running, Client(running.target, timeout=60) as client:
        assert running.pool.pids() == []
        assert [m.model_id for m in client.list_models()] == [good]
        assert client.jacobian(good, X).jacobian.shape == (2, 3)
        client.delete_model(crashing)  # an operator clears the quarantine
        assert not (tmp_path / "quarantine" / f"{crashing}.archive").exists()


def test_an_upload_that_crashes_its_loader_leaves_nothing_and_is_not_retried(tmp_path):
    with running_server(str(tmp_path)) as running, Client(running.target, timeout=60) as client:
        with pytest.raises(InvalidArgument, match="crashed its worker"):
            client.upload(hostile.deeply_nested())
        assert list(tmp_path.rglob("*.archive")) == []  # not kept, not even in quarantine
        assert client.list_models() == []
        with pytest.raises(FailedPrecondition, match="quarantined"):  # never loaded again
            client.upload(hostile.deeply_nested())
        assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)


def test_an_archive_that_hangs_its_loader_is_cut_at_the_load_timeout(tmp_path):
    slow = tmp_path / "slow"
    slow.mkdir()
    with (
        running_server(str(slow), load_timeout=1.0, worker_cpu_seconds=0) as running,
        Client(running.target, timeout=60) as client,
    ):
        # an archive too large to inflate within a second: loading is stopped and refused
        with pytest.raises(Exception, match="load limit"):
            client.upload(hostile.slow_to_load())
        assert list(slow.glob("*.archive")) == []
        assert client.jacobian(hostile.good_script(), X).jacobian.shape == (2, 3)
    shutil.rmtree(slow)
