"""Every ``jacserve`` client command end to end against the test server."""

from __future__ import annotations

import json
import pathlib
import re
import socket

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from torch.func import jacrev

from jacserve.cli import main
from tests.models import MLP, archive_of

F64 = torch.float64


@pytest.fixture()
def cli(server, capsys):
    """Run ``jacserve ARGS --target <test server>``; returns (exit code, stdout, stderr)."""

    def run(*args: str, target: str | None = None) -> tuple[int, str, str]:
        code = main([*args, "--target", target or server.target])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture()
def model(tmp_path: pathlib.Path) -> tuple[MLP, pathlib.Path]:
    module = MLP(3, 6, 2, F64)
    path = tmp_path / "mlp.pt"
    path.write_bytes(archive_of(module, (torch.ones(3, dtype=F64),), "torchscript"))
    return module, path


def _not_blank_png(path: pathlib.Path, min_pixels: int = 200) -> None:
    pixels = mpimg.imread(path)
    assert pixels.shape[0] >= min_pixels and pixels.shape[1] >= min_pixels, pixels.shape
    assert float(pixels[..., :3].std()) > 0.05, "the image is blank"


def test_upload_and_models_commands(cli, model):
    _, path = model
    code, out, _ = cli("upload", str(path))
    model_id = out.strip()
    assert code == 0 and len(model_id) == 64
    code, out, _ = cli("models", "list")
    assert code == 0 and model_id in out and "torchscript" in out
    code, out, _ = cli("models", "show", model_id)
    assert code == 0 and "forward(" in out and "parameter layers.0.weight" in out
    code, out, _ = cli("models", "delete", model_id)
    assert code == 0 and "deleted" in out
    code, _, err = cli("models", "show", model_id)
    assert code == 3 and "not registered" in err


def test_jvp_and_vjp_read_and_write_every_format(cli, model, tmp_path):
    module, path = model
    x, v, u = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64), torch.randn(2, dtype=F64)
    np.save(tmp_path / "x.npy", x.numpy())
    torch.save(v, tmp_path / "v.pt")
    (tmp_path / "u.json").write_text(json.dumps(u.tolist()))
    jacobian = jacrev(module)(x)

    code, out, _ = cli("jvp", str(path), "--inputs", str(tmp_path / "x.npy"),
                       "--tangents", str(tmp_path / "v.pt"), "-o", str(tmp_path / "jvp.npz"))  # fmt: skip
    assert code == 0 and "jvp: shape [2]" in out and "mode: forward" in out
    with np.load(tmp_path / "jvp.npz") as saved:
        torch.testing.assert_close(torch.from_numpy(saved["jvp"]), jacobian @ v)

    code, out, _ = cli("vjp", str(path), "--inputs", str(tmp_path / "x.npy"), "--cotangents",
                       str(tmp_path / "u.json"), "--dtype", "float64", "-o", str(tmp_path / "vjp.json"))  # fmt: skip
    assert code == 0 and "vjp: shape [3]" in out
    saved = json.loads((tmp_path / "vjp.json").read_text())
    torch.testing.assert_close(torch.tensor(saved["vjp"], dtype=F64), u @ jacobian)
    assert saved["metrics"]["mode"] == "reverse"


def test_jacobian_writes_npy_and_a_labelled_heatmap(cli, model, tmp_path):
    module, path = model
    x = torch.randn(3, dtype=F64)
    np.savez(tmp_path / "x.npz", x=x.numpy())
    code, out, _ = cli("jacobian", str(path), "--inputs", str(tmp_path / "x.npz"),
                       "-o", str(tmp_path / "j.pt"), "--plot", str(tmp_path / "j.png"),
                       "--output-names", "lift,drag")  # fmt: skip
    assert code == 0 and "jacobian: shape [2, 3]" in out and "plot:" in out
    torch.testing.assert_close(torch.load(tmp_path / "j.pt")["jacobian"], jacrev(module)(x))
    _not_blank_png(tmp_path / "j.png")


def test_jacobian_splits_over_comma_separated_replicas(cli, server, model, tmp_path):
    module, path = model
    x = torch.randn(3, dtype=F64)
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, _ = cli("jacobian", str(path), "--inputs", str(tmp_path / "x.npy"), "--shards",
                       "2", "-o", str(tmp_path / "j.pt"), target=f"{server.target},{server.target}")  # fmt: skip
    assert code == 0 and re.search(r"split: [23] windows of passes over 1 server\(s\)", out), out
    torch.testing.assert_close(torch.load(tmp_path / "j.pt")["jacobian"], jacrev(module)(x))


def test_verify_prints_the_finite_difference_check(cli, model, tmp_path):
    _, path = model
    np.save(tmp_path / "x.npy", np.ones(3))
    code, out, _ = cli("jacobian", str(path), "--inputs", str(tmp_path / "x.npy"), "--verify", "2")
    assert code == 0, out
    found = re.search(
        r"finite-difference check \(float64, 2 directions\): max relative error (\S+)", out
    )
    assert found and float(found.group(1)) < 1e-6, out


class Energy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[0] * x[1]) ** 2 + torch.sin(x).sum()


def test_hessian_and_hvp_commands(cli, tmp_path):
    path = tmp_path / "energy.pt"
    torch.jit.save(torch.jit.script(Energy()), str(path))
    x = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "v.npy", np.ones(3))
    code, out, _ = cli("hessian", str(path), "--inputs", str(tmp_path / "x.npy"),
                       "-o", str(tmp_path / "h.pt"), "--plot", str(tmp_path / "h.png"))  # fmt: skip
    assert code == 0 and "hessian: shape [3, 3]" in out, out
    expected = torch.autograd.functional.hessian(Energy(), x)
    torch.testing.assert_close(torch.load(tmp_path / "h.pt")["hessian"], expected)
    _not_blank_png(tmp_path / "h.png")
    code, out, _ = cli("hvp", str(path), "--inputs", str(tmp_path / "x.npy"),
                       "--vectors", str(tmp_path / "v.npy"), "-o", str(tmp_path / "p.npz"))  # fmt: skip
    assert code == 0 and "hvp: shape [3]" in out, out
    torch.testing.assert_close(
        torch.from_numpy(np.load(tmp_path / "p.npz")["hvp"]), expected @ torch.ones(3, dtype=F64)
    )


class Chain(torch.nn.Module):
    """y_i = x_i · x_{i+1}: bidiagonal Jacobian."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:-1] * x[1:]


def test_sensitivity_spectrum_and_sparse_commands(cli, tmp_path):
    path = tmp_path / "chain.pt"
    torch.jit.save(torch.jit.script(Chain()), str(path))
    x = torch.arange(1.0, 9.0, dtype=F64)
    np.savez(tmp_path / "x.npz", x=x.numpy())
    code, out, _ = cli("sensitivity", str(path), "--inputs", str(tmp_path / "x.npz"),
                       "--top", "3", "--plot", str(tmp_path / "s.png"))  # fmt: skip
    assert code == 0 and "top 3 inputs by elasticity" in out, out
    assert re.search(r"1\. x\[\d\]: 1\.41421", out), out  # interior inputs feed two products
    _not_blank_png(tmp_path / "s.png")
    code, out, _ = cli("spectrum", str(path), "--inputs", str(tmp_path / "x.npz"), "--k", "2",
                       "--plot", str(tmp_path / "sv.png"))  # fmt: skip
    expected = torch.linalg.svdvals(torch.autograd.functional.jacobian(Chain(), x))[:2]
    assert code == 0 and f"σ1 = {float(expected[0]):.6g}" in out, out
    _not_blank_png(tmp_path / "sv.png")
    code, out, _ = cli("jacobian", str(path), "--inputs", str(tmp_path / "x.npz"),
                       "--sparsity", "detect", "-o", str(tmp_path / "j.npz"))  # fmt: skip
    assert code == 0 and "14 nonzeros, 2 passes (colours)" in out, out
    saved = np.load(tmp_path / "j.npz")
    dense = np.zeros(tuple(saved["shape"]))
    dense[saved["rows"], saved["cols"]] = saved["values"]
    np.testing.assert_allclose(dense, torch.autograd.functional.jacobian(Chain(), x).numpy())


def test_grad_draws_the_largest_sensitivities(cli, model, tmp_path):
    _, path = model
    np.save(tmp_path / "x.npy", np.ones(3))
    np.save(tmp_path / "u.npy", np.ones(2))
    code, out, _ = cli("grad", str(path), "--inputs", str(tmp_path / "x.npy"), "--cotangents",
                       str(tmp_path / "u.npy"), "--plot", str(tmp_path / "g.png"), "--top", "8")  # fmt: skip
    assert code == 0 and "gradients of 4 parameters" in out
    _not_blank_png(tmp_path / "g.png")


def test_exit_codes_tell_usage_server_and_connection_failures(cli, model, tmp_path):
    _, path = model
    code, _, err = cli("jacobian", str(path), "--inputs", str(tmp_path / "missing.npy"))
    assert code == 2 and "no such file" in err
    np.save(tmp_path / "x.npy", np.ones(5))
    code, _, err = cli("jacobian", str(path), "--inputs", str(tmp_path / "x.npy"))
    assert code == 3 and "refused" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    code, _, err = cli("models", "list", "--timeout", "3", target=closed)
    assert code == 4 and "cannot reach a server" in err
    with pytest.raises(SystemExit) as usage:
        main(["jacobian"])
    assert usage.value.code == 2


@pytest.mark.parametrize("command", ["upload", "models", "jvp", "vjp", "jacobian", "grad"])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "Examples:" in capsys.readouterr().out


class _DictOutput(torch.nn.Module):
    """A Hugging Face-style model: a dict of a vector and a scalar."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": torch.tanh(x) * 2.0, "loss": (x**2).sum()}


def test_dict_outputs_are_summarized_written_by_leaf_and_plotted(cli, tmp_path):
    x = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    archive = tmp_path / "dict.pt2"
    torch.export.save(torch.export.export(_DictOutput(), (x,)), archive)
    np.save(tmp_path / "x.npy", x.numpy())
    out_file, plot = tmp_path / "J.npz", tmp_path / "J.png"
    code, out, err = cli(
        "jacobian", str(archive), "--inputs", str(tmp_path / "x.npy"), "-o", str(out_file),
        "--plot", str(plot),
    )  # fmt: skip
    assert code == 0, err
    assert "jacobian: shape [3, 3]" in out  # the first leaf, "logits"
    want = jacrev(_DictOutput())(x)
    written = np.load(out_file)
    np.testing.assert_allclose(written["jacobian.logits"], want["logits"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(written["jacobian.loss"], want["loss"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(written["output.loss"], float((x**2).sum()), rtol=1e-12)
    _not_blank_png(plot, min_pixels=100)
    code, out, err = cli(
        "jvp", str(archive), "--inputs", str(tmp_path / "x.npy"),
        "--tangents", str(tmp_path / "x.npy"), "-o", str(tmp_path / "jvp.json"),
    )  # fmt: skip
    assert code == 0, err
    document = json.loads((tmp_path / "jvp.json").read_text())
    assert set(document) >= {"jvp.logits", "jvp.loss", "output.logits", "output.loss"}
    np.testing.assert_allclose(document["jvp.loss"], float(2 * (x * x).sum()), rtol=1e-12)
