"""Shared fixtures: a real server on a loopback port and a real client talking to it.

At the repository root so that the SDK's docstring examples (doctests) run against the
same server as the tests.
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings
from collections.abc import Iterator

import pytest
import torch

from jacserve.client import Client
from jacserve.server.app import RunningServer, serve
from jacserve.server.config import ServerConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*TorchScript.*")


@contextlib.contextmanager
def running_server(model_dir: str | None = None, **settings: object) -> Iterator[RunningServer]:
    """A server on free ports for one test module or test (no metrics unless asked)."""
    settings.setdefault("metrics_port", None)
    settings.setdefault("compile", "off")
    running = serve(ServerConfig(port=0, model_dir=model_dir, **settings))  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop(grace=0)


@pytest.fixture()
def marker(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A path that a hostile archive's exploit would create if it ever ran; the test fails
    if it exists afterwards."""
    path = tmp_path / "exploit-ran"
    yield path
    assert not path.exists(), "an exploit in an archive ran"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the session, on free gRPC and metrics ports."""
    running = serve(
        ServerConfig(
            port=0,
            metrics_port=0,
            model_dir=str(tmp_path_factory.mktemp("models")),
            max_message_bytes=256 << 20,
            compile="off",  # compiled programs have tests of their own
        )
    )
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[Client]:
    """A client connected to the session's server."""
    with Client(server.target, timeout=120, max_message_bytes=256 << 20) as c:
        yield c


@pytest.fixture(autouse=True)
def _sdk_doctest_namespace(request: pytest.FixtureRequest) -> None:
    """Give docstring examples ``target``, ``client``, ``model_id`` (a Linear(3, 2)) and ``torch``."""
    node = request.node
    if not isinstance(node, pytest.DoctestItem) or "jacserve/client" not in str(node.path):
        return
    namespace = request.getfixturevalue("doctest_namespace")
    running = request.getfixturevalue("server")
    sdk = request.getfixturevalue("client")
    torch.manual_seed(0)
    namespace.update(
        target=running.target,
        client=sdk,
        model_id=sdk.upload(torch.jit.script(torch.nn.Linear(3, 2))),
        torch=torch,
    )
