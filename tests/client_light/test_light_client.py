"""The light client: ``jacserve.client`` without torch (NumPy in, NumPy out), per-call
metadata, compression and channel options, against a real server on loopback.

The torch-free side runs in a subprocess whose import system refuses torch; this
process builds the archive and the torch.func references.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from torch.func import jacrev, jvp, vjp

from conftest import running_server
from jacserve.client import Client, NotFound, ResourceExhausted, Unauthenticated

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Refuses every import of torch: what a process without torch installed sees.
BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


class Model(torch.nn.Module):
    """``y = tanh(W x) * 2``: R^3 → R^2 in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(
            torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.float64)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.weight @ x) * 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(str(tmp_path_factory.mktemp("models"))) as running:
        yield running.target


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("archive") / "model.pt"
    torch.jit.save(torch.jit.script(Model()), str(path))
    return path


def run_without_torch(script: str, *args: str) -> dict:
    """Run ``script`` in a Python that cannot import torch; it prints one JSON object."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(script), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_does_not_load_torch() -> None:
    got = run_without_torch(
        """
        import json, sys
        import jacserve.client
        print(json.dumps({"torch": "torch" in sys.modules}))
        """
    )
    assert got == {"torch": False}


def test_numpy_in_numpy_out_without_torch(server: str, archive: pathlib.Path, tmp_path) -> None:
    x = np.array([0.3, -0.2, 0.1])
    v, u = np.array([1.0, 2.0, -1.0]), np.array([0.5, -1.0])
    np.savez(tmp_path / "in.npz", x=x, v=v, u=u)
    got = run_without_torch(
        """
        import json, sys
        import numpy as np
        from jacserve.client import Client

        target, archive, inputs, out = sys.argv[1:]
        arrays = np.load(inputs)
        x, v, u = arrays["x"], arrays["v"], arrays["u"]
        with Client(target, timeout=60) as client:
            model_id = client.upload(open(archive, "rb").read())  # bytes
            assert client.upload(archive) == model_id  # a path
            j = client.jvp(model_id, x, v)
            b = client.vjp(model_id, x, u)
            J = client.jacobian(model_id, x)
            s = client.jacobian(model_id, np.full(3, 0.5))
            info = client.get_model(model_id)
        results = [j.output, j.jvp, b.vjp, J.jacobian, J.output, s.jacobian]
        np.savez(out, jvp=j.jvp, output=j.output, vjp=b.vjp, jacobian=J.jacobian)
        print(json.dumps({
            "types": sorted({type(r).__name__ for r in results}),
            "dtype": str(info.parameters[0].dtype),
            "torch": "torch" in sys.modules,
        }))
        """,
        server, str(archive), str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
    )  # fmt: skip
    assert got == {"types": ["ndarray"], "dtype": "float64", "torch": False}
    model, xt = Model(), torch.from_numpy(x)
    output, tangent = jvp(model, (xt,), (torch.from_numpy(v),))
    _, pullback = vjp(model, xt)
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["output"], output.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(out["jvp"], tangent.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(
            out["vjp"], pullback(torch.from_numpy(u))[0].detach().numpy(), rtol=1e-12
        )
        np.testing.assert_allclose(out["jacobian"], jacrev(model)(xt).detach().numpy(), rtol=1e-12)


def test_torch_in_torch_out(server: str, archive: pathlib.Path) -> None:
    with Client(server, timeout=60) as client:
        result = client.jacobian(archive.read_bytes(), torch.ones(3, dtype=torch.float64))
    assert isinstance(result.jacobian, torch.Tensor)
    torch.testing.assert_close(result.jacobian, jacrev(Model())(torch.ones(3, dtype=torch.float64)))


def test_per_call_metadata_reaches_the_server(server: str) -> None:
    client = Client(server, timeout=30, metadata=[("x-client", "light")])
    with client, pytest.raises(NotFound) as info:
        client.get_model("0" * 64, metadata=[("x-request-id", "light-call-1")])
    assert info.value.request_id == "light-call-1"


def test_per_call_metadata_merges_with_the_client_token(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    with (
        running_server(str(tmp_path / "models"), auth_token_file=str(tokens)) as running,
        Client(running.target, timeout=30) as client,
    ):
        with pytest.raises(Unauthenticated):
            client.list_models()
        assert client.list_models(metadata=[("authorization", "Bearer s3cret")]) == []


@pytest.mark.parametrize("where", ["client", "call"])
def test_compression(server: str, archive: pathlib.Path, where: str) -> None:
    gzip = grpc.Compression.Gzip
    x = np.linspace(-1.0, 1.0, 3)
    with Client(server, timeout=60, compression=gzip if where == "client" else None) as client:
        extra = {"compression": gzip} if where == "call" else {}
        result = client.jacobian(archive.read_bytes(), x, **extra)
    expected = jacrev(Model())(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(result.jacobian), expected.detach().numpy())


def test_channel_options_pass_through(server: str, archive: pathlib.Path) -> None:
    tiny = [("grpc.max_receive_message_length", 64)]  # replaces the client's default
    with Client(server, timeout=30) as client:
        model_id = client.upload(archive.read_bytes())
    with (
        Client(server, timeout=30, channel_options=tiny) as client,
        pytest.raises(ResourceExhausted, match="larger than max"),
    ):
        client.get_model(model_id)  # a ModelInfo is above 64 bytes


def test_serve_without_the_server_extra_says_what_to_install() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT)])}
    script = BLOCK_TORCH + "import sys\nfrom jacserve.cli import main\nsys.exit(main(['serve']))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("jacserve serve: ") and "torch" in line
    assert line.endswith("the server extra: pip install torch==2.13.0 'jacserve[server]'")
