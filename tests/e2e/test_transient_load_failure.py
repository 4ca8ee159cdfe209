"""A load failure that is not the archive's fault quarantines nothing (issue #14).

A checked archive whose file is briefly missing when a new worker starts (a shared
store's local copy evicted while the bucket is unreachable, a volume remounted) answers
NOT_FOUND for that call, and serves again once the file is back; only a loader that
crashes, hangs or refuses the archive quarantines it (tests/e2e/test_quarantine.py).
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from conftest import running_server
from jacserve.client import Client, NotFound
from tests import hostile

X = torch.randn(3)


def test_a_briefly_missing_archive_is_not_quarantined(tmp_path):
    with running_server(str(tmp_path), workers=1) as server, Client(server.target) as client:
        model_id = client.upload(hostile.good_script())
        stored = pathlib.Path(server.store.path(model_id))
        aside = stored.with_name("aside")
        stored.rename(aside)
        server.pool.forget(model_id, every_tenant=True)  # the next call starts a new worker
        with pytest.raises(NotFound):
            client.jacobian(model_id, X)
        aside.rename(stored)
        assert client.jacobian(model_id, X).jacobian.shape == (2, 3)
        assert not (tmp_path / "quarantine").exists() or not any(
            (tmp_path / "quarantine").iterdir()
        )
