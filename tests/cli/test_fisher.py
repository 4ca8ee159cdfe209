"""``jacserve fisher`` end to end against a real server: a linear regression (F = XᵀX/σ²
exactly), ``--parameters``, ``--wrt`` an input, ``--noise-covariance``, an
unidentifiable model (two parameters that enter only as a product: a warning, NaN
standard errors, exit 0), ``-o`` in every format, ``--plot``, and the failures (a flag or
file that cannot be used: exit 2 before any call; a request the server refuses: exit 3).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import numpy as np
import pytest
import torch

from jacserve.cli import main

F64 = torch.float64
X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [0.5, 3.0]], dtype=F64)


class Regression(torch.nn.Module):
    """y = X w + b, one output per row of the design X."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor([0.25], dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


class Product(torch.nn.Module):
    """y = a·b·t + c: a and b enter only as their product."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(2.0, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(3.0, dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * t + self.c


@pytest.fixture()
def extra_files(tmp_path: pathlib.Path) -> None:
    """Beside the SIR example: a regression and its design, the product model, noise files."""
    torch.jit.save(torch.jit.script(Regression()), str(tmp_path / "regression.pt"))
    torch.jit.save(torch.jit.script(Product()), str(tmp_path / "product.pt"))
    np.save(tmp_path / "X.npy", X.numpy())
    np.save(tmp_path / "t.npy", np.linspace(0.0, 1.0, 5))
    np.save(tmp_path / "noise.npy", np.diag([0.25, 1.0, 0.25, 4.0]))
    np.save(tmp_path / "noise3.npy", np.eye(3))
    np.save(tmp_path / "not-spd.npy", np.diag([0.25, -1.0, 0.25, 4.0]))
    np.save(tmp_path / "vector.npy", np.ones(4))


def _design(x: torch.Tensor) -> torch.Tensor:
    """The regression's Jacobian w.r.t. (w, b): the design with a column of ones."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], dim=1)


def test_linear_regression_gives_xtx_over_sigma2(
    cli, client, files, tmp_path, assert_not_blank_png
):
    out_json, plot = tmp_path / "fisher.json", tmp_path / "fisher.png"
    code, out, err = cli("fisher", files["regression.pt"], "--inputs", files["X.npy"],
                         "--noise-std", "0.5", "--plot", str(plot), "-o", str(out_json))  # fmt: skip
    assert code == 0, err
    design = _design(X)
    exact = design.T @ design / 0.25
    saved = json.loads(out_json.read_text())
    np.testing.assert_allclose(saved["matrix"], exact.numpy(), rtol=1e-12)
    np.testing.assert_allclose(saved["standard_errors"],
                               torch.linalg.inv(exact).diagonal().sqrt().numpy(), rtol=1e-10)  # fmt: skip
    values = torch.linalg.eigvalsh(exact).flip(0)
    np.testing.assert_allclose(saved["eigenvalues"], values.numpy(), rtol=1e-10)
    vectors = torch.tensor(saved["eigenvectors"], dtype=F64)
    np.testing.assert_allclose((exact @ vectors).numpy(), (vectors * values).numpy(), atol=1e-9)
    assert saved["labels"] == ["w[0]", "w[1]", "b"] and saved["invertible"] is True
    assert saved["slices"] == [{"name": "w", "start": 0, "stop": 2, "shape": [2]},
                               {"name": "b", "start": 2, "stop": 3, "shape": [1]}]  # fmt: skip
    assert "Fisher information: 3 × 3 over 3 parameter elements (noise std 0.5)" in out
    assert "slices: w [2] at 0:2; b [1] at 2:3" in out and "invertible: yes" in out
    printed = [float(v) for v in re.findall(r"^  λ\d = (\S+)  mostly", out, re.M)]
    np.testing.assert_allclose(printed, values.numpy(), rtol=1e-3)
    errors = re.findall(r"^  (w\[\d\]|b): (\S+)$", out, re.M)
    assert [name for name, _ in errors] == ["w[0]", "w[1]", "b"], out
    sdk = client.fisher_information(files["regression.pt"], X, noise_std=0.5)
    np.testing.assert_allclose(saved["standard_errors"], sdk.standard_errors.numpy(), rtol=1e-12)
    assert_not_blank_png(plot)


def test_parameters_noise_covariance_and_npy(cli, files, tmp_path):
    code, out, err = cli("fisher", files["regression.pt"], "--inputs", files["X.npy"],
                         "--parameters", "w", "--noise-covariance", files["noise.npy"],
                         "--labels", "slope0,slope1", "-o", str(tmp_path / "F.npy"))  # fmt: skip
    assert code == 0, err
    noise = torch.diag(torch.tensor([0.25, 1.0, 0.25, 4.0], dtype=F64))
    exact = X.T @ torch.linalg.inv(noise) @ X
    saved = np.load(tmp_path / "F.npy")
    assert saved.shape == (2, 2) and saved.dtype == np.float64
    np.testing.assert_allclose(saved, exact.numpy(), rtol=1e-12)
    assert "(noise covariance from a file)" in out and "  slope1: " in out, out
    code, _, err = cli("fisher", files["regression.pt"], "--inputs", files["X.npy"],
                       "-o", str(tmp_path / "all.npz"))  # fmt: skip
    assert code == 0, err
    with np.load(tmp_path / "all.npz") as saved:
        assert {"matrix", "eigenvalues", "eigenvectors", "standard_errors"} <= set(saved.files)
        np.testing.assert_allclose(saved["matrix"], (_design(X).T @ _design(X)).numpy())


def test_an_unidentifiable_product_warns_and_exits_0(cli, files, tmp_path, assert_not_blank_png):
    out_json, plot = tmp_path / "product.json", tmp_path / "product.png"
    code, out, err = cli("fisher", files["product.pt"], "--inputs", files["t.npy"],
                         "--plot", str(plot), "-o", str(out_json))  # fmt: skip
    assert code == 0, err
    assert "warning: the Fisher information is singular" in out and "involving a, b" in out, out
    assert out.count("singular") == 1, out  # the SDK's RuntimeWarning is not printed twice
    assert "invertible: no (standard errors are NaN)" in out
    assert re.search(r"λ3 = \S+  mostly [ab] \S+ — unidentifiable: [ab] [+-]0\.8\d\d, [ab] ", out)
    saved = json.loads(out_json.read_text())
    assert saved["invertible"] is False and all(v != v for v in saved["standard_errors"])
    null = np.asarray(saved["eigenvectors"])[:, 2]
    np.testing.assert_allclose(np.abs(null), np.array([2.0, 3.0, 0.0]) / 13**0.5, atol=1e-6)
    assert null[0] * null[1] < 0  # b·δa + a·δb = 0: (δa, δb) ∝ (a, −b)
    assert_not_blank_png(plot)


def test_wrt_an_input_of_the_sir_model(cli, client, files, tmp_path):
    code, out, err = cli("fisher", files["sir.pt"], "--inputs", files["params.json"],
                         "--dtype", "float64", "--wrt", "params", "--noise-std", "0.005",
                         "-o", str(tmp_path / "sir.json"))  # fmt: skip
    assert code == 0, err
    assert "3 × 3 over 3 input elements (noise std 0.005)" in out
    assert "slices: params [3] at 0:3" in out and "and relative to the value:" in out
    nominal = torch.tensor([0.3, 0.1, 0.01], dtype=F64)
    sdk = client.fisher_information(files["sir.pt"], nominal, noise_std=0.005, wrt=[0])
    saved = json.loads((tmp_path / "sir.json").read_text())
    np.testing.assert_allclose(saved["matrix"], sdk.matrix.numpy(), rtol=1e-12)
    assert saved["labels"] == ["params[0]", "params[1]", "params[2]"]
    relative = re.search(r"^  params\[2\]: (\S+) \((\S+)\)$", out, re.M)
    assert float(relative.group(2)) == pytest.approx(float(relative.group(1)) / 0.01, rel=1e-2)


# (arguments after "fisher", with file names from the files fixture; a piece of the message)
USAGE_ERRORS = [
    ("regression.pt --inputs X.npy --noise-std 0", "--noise-std must be > 0"),
    ("regression.pt --inputs X.npy --noise-std nan", "--noise-std must be > 0"),
    ("regression.pt --inputs X.npy --noise-std 1 --noise-covariance noise.npy", "not allowed"),
    ("regression.pt --inputs X.npy --parameters w --wrt 0", "not allowed with argument"),
    ("regression.pt --inputs X.npy --noise-covariance missing.npy", "missing.npy: no such"),
    ("regression.pt --inputs X.npy --noise-covariance vector.npy", "expected a square matrix"),
    ("regression.pt --inputs X.npy --wrt design", "'design' is neither an input"),
    ("regression.pt --inputs X.npy --plot fisher.docx", "--plot"),
    ("regression.pt --inputs X.npy -o fisher.csv", "-o"),
    ("regression.pt --inputs missing.npy", "--inputs"),
    ("missing.pt --inputs X.npy", "no such file, and not a model id"),
]


@pytest.mark.parametrize(("case", "expected"), USAGE_ERRORS, ids=[e for _, e in USAGE_ERRORS])
def test_usage_and_file_errors_exit_2(cli, argv, tmp_path, assert_one_line, case, expected):
    code, out, err = cli("fisher", *argv(case))
    assert_one_line(code, out, err, 2)
    assert expected in err, err
    assert not out and not [p for p in tmp_path.iterdir() if p.suffix in (".docx", ".csv")]


REFUSED = [
    ("regression.pt --inputs X.npy --parameters w nope", "unknown name(s) ['nope']"),
    ("regression.pt --inputs X.npy --noise-covariance noise3.npy", "expected shape [4, 4]"),
    ("regression.pt --inputs X.npy --noise-covariance not-spd.npy", "noise_covariance"),
    ("sir.pt --inputs params.json", "parameter"),  # the SIR archive has no parameters
]


@pytest.mark.parametrize(("case", "expected"), REFUSED, ids=[e for _, e in REFUSED])
def test_what_the_server_refuses_exits_3(cli, argv, assert_one_line, case, expected):
    code, out, err = cli("fisher", *argv(case))
    assert_one_line(code, out, err, 3)
    assert "the server refused" in err and expected in err, err


def test_a_real_process_exits_as_documented(process, files):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return process("fisher", *args)

    singular = run(files["product.pt"], "--inputs", files["t.npy"])
    assert singular.returncode == 0 and "invertible: no" in singular.stdout, singular
    assert "RuntimeWarning" not in singular.stderr, singular.stderr
    refused = run(files["regression.pt"], "--inputs", files["X.npy"], "--parameters", "nope")
    assert refused.returncode == 3 and "unknown name(s)" in refused.stderr
    missing = run(files["regression.pt"], "--inputs", files["X.npy"] + ".missing")
    assert missing.returncode == 2 and missing.stderr.startswith("jacserve: --inputs")


def test_help_shows_examples_and_the_noise_model(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fisher", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "jacserve fisher model.pt --inputs design.npy" in text and "--noise-std S" in text
    assert "Cramér–Rao" in text and "Exit codes" in text
