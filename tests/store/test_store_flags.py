"""``--model-store``: file URLs are today's model folder, s3 URLs a shared store; others
are refused at start-up."""

from __future__ import annotations

import pathlib

import pytest
import torch

from conftest import running_server
from jacserve.client import Client
from jacserve.server.config import parse_config
from jacserve.server.registry.store import ArchiveStore


def test_flags_and_variables_name_the_store() -> None:
    config = parse_config(["--model-store", "s3://models/prod"], environ={})
    assert (config.model_store, config.model_store_ttl) == ("s3://models/prod", 2.0)
    config = parse_config([], environ={"JACSERVE_MODEL_STORE": "file:///srv/models"})
    assert config.model_store == "file:///srv/models"
    config = parse_config(["--model-cache-bytes", "1000", "--model-store-ttl", "0"], environ={})
    assert (config.model_cache_bytes, config.model_store_ttl) == (1000, 0.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--model-store", "ftp://host/models"],
        ["--model-store", "s3://"],
        ["--model-store", "file://host/models"],
        ["--model-store", "file:///a", "--model-dir", "/b"],
        ["--model-store-ttl", "-1"],
        ["--model-cache-bytes", "0"],
    ],
)
def test_malformed_store_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(argv, environ={})


def test_a_file_url_is_the_model_folder(tmp_path: pathlib.Path) -> None:
    with running_server(model_store=f"file://{tmp_path}", workers=1) as running:
        assert isinstance(running.store, ArchiveStore) and running.store.directory == tmp_path
        with Client(running.target, timeout=60) as client:
            model_id = client.upload(torch.jit.script(torch.nn.Linear(3, 2)))
        assert (tmp_path / f"{model_id}.archive").exists()
