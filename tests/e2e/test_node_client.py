"""A client in another language, written from the shipped .proto alone: Node.js with
@grpc/grpc-js uploads an archive, gets a Jacobian (checked against torch.func) and reads
a refused call's google.rpc.Status details from grpc-status-details-bin.

The test installs the npm packages itself; it is skipped, saying why, only where Node.js
or the npm registry is out of reach.
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import shutil
import subprocess

import pytest
import torch

from tests.models import MLP

HERE = pathlib.Path(__file__).resolve().parent / "node"
PACKAGES = ["@grpc/grpc-js@1", "@grpc/proto-loader@0.7", "protobufjs@7"]


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A folder with client.js and its npm packages installed."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("Node.js and npm are not installed (Debian: apt-get install nodejs npm)")
    folder = tmp_path_factory.mktemp("node-client")
    shutil.copy(HERE / "client.js", folder / "client.js")
    (folder / "package.json").write_text('{"name": "jacserve-node-check", "private": true}')
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", *PACKAGES],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.skip(f"npm could not install {PACKAGES}: {install.stderr.strip()[-300:]}")
    return folder


def _google_protos() -> pathlib.Path:
    """The folder holding google/rpc/*.proto (shipped by googleapis-common-protos)."""
    status = importlib.resources.files("google.rpc") / "status.proto"
    return pathlib.Path(str(status)).parent.parent.parent


def _proto_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """The contract as the package ships it (jacserve/v1/jacobian_service.proto)."""
    shipped = importlib.resources.files("jacserve.v1") / "jacobian_service.proto"
    target = tmp_path / "protos" / "jacserve" / "v1"
    target.mkdir(parents=True)
    (target / "jacobian_service.proto").write_bytes(shipped.read_bytes())
    return tmp_path / "protos"


def test_a_node_client_uploads_differentiates_and_reads_error_details(
    server, node_client: pathlib.Path, tmp_path: pathlib.Path
):
    model = MLP(3, 5, 2, torch.float64)
    x = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
    archive = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), archive)
    run = subprocess.run(
        ["node", "client.js", server.target, str(archive), json.dumps(x.tolist()),
         str(_proto_dir(tmp_path)), str(_google_protos())],
        cwd=node_client, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    jacobian = torch.tensor(answer["jacobian"]["values"], dtype=torch.float64)
    assert answer["jacobian"]["shape"] == [2, 3]
    torch.testing.assert_close(jacobian.reshape(2, 3), torch.func.jacrev(model)(x))
    error = answer["error"]
    assert error["code"] == 5  # NOT_FOUND
    assert error["reason"] == "MODEL_NOT_FOUND", error
    assert error["metadata"].get("model_id") == "0" * 64
