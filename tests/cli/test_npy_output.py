"""``-o FILE.npy`` holds each command's primary result (the Jacobian, the gradient, …),
also for models of several inputs and outputs; ``.npz`` keeps every array by name."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from torch import Tensor

from jacserve.cli import main
from tests.models import Affine, TwoInTwoOut

F64 = torch.float64


class Energy(torch.nn.Module):
    """A scalar of two inputs: (Σ x·y)² + Σ y³."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return (x * y).sum() ** 2 + (y**3).sum()


class Chain(torch.nn.Module):
    """y_i = x_i · x_{i+1}: a bidiagonal Jacobian."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:-1] * x[1:]


@pytest.fixture()
def cli(server, capsys, tmp_path):
    """``jacserve ARGS --target <test server> -o FILE.npy``: the array written."""

    def run(*args: str) -> np.ndarray:
        out_file = tmp_path / "result.npy"
        out_file.unlink(missing_ok=True)
        code = main([*args, "-o", str(out_file), "--target", server.target])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert f"written: {out_file}" in out
        return np.load(out_file)

    return run


def _script(module: torch.nn.Module, folder: pathlib.Path, name: str) -> str:
    path = folder / name
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def _npz(folder: pathlib.Path, name: str, **arrays: Tensor) -> str:
    np.savez(folder / name, **{k: v.numpy() for k, v in arrays.items()})
    return str(folder / name)


def test_jacobian_and_products_of_several_inputs_and_outputs(cli, tmp_path):
    x, y = torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    model = _script(TwoInTwoOut(), tmp_path, "two.pt")
    inputs = _npz(tmp_path, "xy.npz", x=x, y=y)
    # rows: x⊙y (3), Σx + Σy³ (1); columns: x (3), y (3)
    want = torch.cat([torch.cat([torch.diag(y), torch.diag(x)], 1),
                      torch.cat([torch.ones(1, 3, dtype=F64), 3 * y[None] ** 2], 1)])  # fmt: skip
    np.testing.assert_allclose(cli("jacobian", model, "--inputs", inputs), want.numpy())
    v = torch.tensor([0.1, 0.2, 0.3, -1.0, 0.0, 1.0], dtype=F64)
    tangents = _npz(tmp_path, "v.npz", x=v[:3], y=v[3:])
    np.testing.assert_allclose(cli("jvp", model, "--inputs", inputs, "--tangents", tangents),
                               (want @ v).numpy())  # fmt: skip
    u = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    cotangents = _npz(tmp_path, "u.npz", a=u[:3], b=u[3].reshape(()))
    np.testing.assert_allclose(cli("vjp", model, "--inputs", inputs, "--cotangents", cotangents),
                               (u @ want).numpy())  # fmt: skip


def test_hessian_and_hvp_of_two_inputs(cli, tmp_path):
    x, y = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.5, -1.0], dtype=F64)
    model = _script(Energy(), tmp_path, "energy.pt")
    inputs = _npz(tmp_path, "xy.npz", x=x, y=y)
    want = torch.autograd.functional.hessian(lambda z: Energy()(z[:2], z[2:]), torch.cat([x, y]))
    np.testing.assert_allclose(cli("hessian", model, "--inputs", inputs), want.numpy())
    v = torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=F64)
    vectors = _npz(tmp_path, "v.npz", x=v[:2], y=v[2:])
    np.testing.assert_allclose(cli("hvp", model, "--inputs", inputs, "--vectors", vectors),
                               (want @ v).numpy())  # fmt: skip


def test_grad_is_every_parameter_flattened_in_order(cli, tmp_path):
    module = Affine(3, 2, F64)
    model = _script(module, tmp_path, "affine.pt")
    x, u = torch.tensor([1.0, -2.0, 0.5], dtype=F64), torch.tensor([3.0, -1.0], dtype=F64)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "u.npy", u.numpy())
    (module(x) * u).sum().backward()
    want = torch.nn.utils.parameters_to_vector(p.grad for p in module.parameters())
    got = cli("grad", model, "--inputs", str(tmp_path / "x.npy"),
              "--cotangents", str(tmp_path / "u.npy"))  # fmt: skip
    np.testing.assert_allclose(got, want.numpy())


def test_sparse_jacobian_sensitivity_and_spectrum(cli, tmp_path):
    model = _script(Chain(), tmp_path, "chain.pt")
    x = torch.arange(1.0, 7.0, dtype=F64)
    np.save(tmp_path / "x.npy", x.numpy())
    inputs = str(tmp_path / "x.npy")
    jacobian = torch.autograd.functional.jacobian(Chain(), x)
    np.testing.assert_allclose(cli("jacobian", model, "--inputs", inputs, "--sparsity", "detect"),
                               jacobian.numpy())  # fmt: skip
    elasticities = jacobian * x[None, :] / Chain()(x)[:, None]
    np.testing.assert_allclose(cli("sensitivity", model, "--inputs", inputs),
                               elasticities.numpy(), rtol=1e-10)  # fmt: skip
    values = cli("spectrum", model, "--inputs", inputs, "--k", "2")
    np.testing.assert_allclose(values, torch.linalg.svdvals(jacobian)[:2].numpy(), rtol=1e-8)


@pytest.mark.parametrize(
    ("command", "primary"),
    [("jacobian", "the Jacobian"), ("grad", "the gradient"), ("jvp", "J·v"),
     ("hessian", "the Hessian"), ("spectrum", "the k singular values")],
)  # fmt: skip
def test_help_says_what_npy_holds(command, primary, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and f"-o FILE.npy holds {primary}" in text, text
