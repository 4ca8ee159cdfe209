"""Shared fixtures: a real server on a loopback port and a real client talking to it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from jacserve.client import Client
from jacserve.server.app import RunningServer, serve
from jacserve.server.config import ServerConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*TorchScript.*")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the session, on free gRPC and metrics ports."""
    running = serve(
        ServerConfig(
            port=0,
            metrics_port=0,
            model_dir=str(tmp_path_factory.mktemp("models")),
            max_message_bytes=256 << 20,
        )
    )
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[Client]:
    """A client connected to the session's server."""
    with Client(server.target, timeout=120, max_message_bytes=256 << 20) as c:
        yield c
