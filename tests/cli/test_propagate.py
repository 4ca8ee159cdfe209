"""``jacserve propagate`` end to end against a real server: the covariance from a file
(.npy, .json) or ``--std``, ``--wrt`` by name, ``-o`` in every format, and its failures
(a covariance file that cannot be used: exit 2 before any call; one the server refuses,
not symmetric or not positive semi-definite: exit 3).

Checked against what the SDK returns, and against a linear model, whose first-order
covariance A Σ Aᵀ is exact.
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
from tests.models import MatrixPlusOffset

F64 = torch.float64
A = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=F64)
SIGMA = torch.tensor([[0.04, 0.01, 0.0], [0.01, 0.09, -0.02], [0.0, -0.02, 0.25]], dtype=F64)


@pytest.fixture()
def extra_files(tmp_path: pathlib.Path) -> None:
    """Beside the SIR example: y = A x + c (x varied, c not) and covariances."""
    torch.jit.save(torch.jit.script(MatrixPlusOffset(A)), str(tmp_path / "linear.pt"))
    np.savez(tmp_path / "xc.npz", x=np.array([1.0, -2.0, 0.5]), c=np.ones(2))
    np.save(tmp_path / "sigma.npy", SIGMA.numpy())
    (tmp_path / "sigma.json").write_text(json.dumps(SIGMA.tolist()))
    asymmetric = SIGMA.clone()
    asymmetric[0, 1] = 0.02
    np.save(tmp_path / "asymmetric.npy", asymmetric.numpy())
    np.save(tmp_path / "indefinite.npy", np.diag([0.04, -0.09, 0.25]))
    np.save(tmp_path / "vector.npy", np.ones(3))
    np.save(tmp_path / "small.npy", np.eye(2))


@pytest.mark.parametrize("covariance", ["sigma.npy", "sigma.json"])
def test_a_linear_models_covariance_is_exact(cli, files, tmp_path, covariance):
    out_json = tmp_path / "out.json"
    code, out, err = cli("propagate", files["linear.pt"], "--inputs", files["xc.npz"],
                         "--wrt", "x", "--covariance", files[covariance], "--dtype", "float64",
                         "--output-names", "y1,y2", "-o", str(out_json))  # fmt: skip
    assert code == 0, err
    exact = A @ SIGMA @ A.T
    assert "3 varied input elements (x[0], x[1], x[2]) → 2 outputs" in out, out
    mean = A @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 1
    for name, m, s in zip(("y1", "y2"), mean.tolist(), exact.diagonal().sqrt().tolist(),
                          strict=True):  # fmt: skip
        line = re.search(rf"^  {name}: (\S+) ± (\S+) ", out, re.M)
        assert line, out
        assert float(line.group(1)) == pytest.approx(m, rel=1e-5)
        assert float(line.group(2)) == pytest.approx(s, rel=1e-3)
    saved = json.loads(out_json.read_text())
    np.testing.assert_allclose(saved["covariance"], exact.numpy(), rtol=1e-12)
    np.testing.assert_allclose(saved["std"], exact.diagonal().sqrt().numpy(), rtol=1e-12)
    np.testing.assert_allclose(saved["mean"], mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(saved["input_covariance"], SIGMA.numpy(), rtol=1e-6)
    assert saved["input_names"] == ["x[0]", "x[1]", "x[2]"]
    assert saved["output_names"] == ["y1", "y2"] and saved["method"] in ("jacobian", "matrix-free")


def test_std_flags_match_the_sdk_on_the_sir_model(cli, client, files, tmp_path):
    stds = [0.015, 0.005, 0.001]
    code, out, err = cli("propagate", files["sir.pt"], "--inputs", files["params.json"],
                         "--dtype", "float64", "--std", *map(str, stds),
                         "--input-names", "beta,gamma,I0", "-o", str(tmp_path / "cov.npy"))  # fmt: skip
    assert code == 0, err
    assert "(beta, gamma, I0) → 8 outputs; method: matrix-free" in out, out
    nominal = torch.tensor([0.3, 0.1, 0.01], dtype=F64)
    sigma = torch.diag(torch.tensor(stds, dtype=F64) ** 2)
    sdk = client.propagate_uncertainty(files["sir.pt"], nominal, sigma)
    saved = np.load(tmp_path / "cov.npy")
    assert saved.shape == (8, 8) and saved.dtype == np.float64
    np.testing.assert_allclose(saved, sdk.covariance.numpy(), rtol=1e-10)
    printed = [float(s) for s in re.findall(r"^  output\[\d\]: \S+ ± (\S+) ", out, re.M)]
    np.testing.assert_allclose(printed, sdk.std.numpy(), rtol=1e-3)
    # one std for every element
    code, _, err = cli("propagate", files["sir.pt"], "--inputs", files["params.json"],
                       "--dtype", "float64", "--std", "0.01", "-o", str(tmp_path / "all.npz"))  # fmt: skip
    assert code == 0, err
    with np.load(tmp_path / "all.npz") as saved:
        np.testing.assert_allclose(saved["input_covariance"], 1e-4 * np.eye(3), rtol=1e-12)
        assert {"covariance", "std", "mean"} <= set(saved.files)


# (arguments after "propagate", with file names from the files fixture; a piece of the message)
USAGE_ERRORS = [
    ("sir.pt --inputs params.json", "one of the arguments --covariance --std is required"),
    ("sir.pt --inputs params.json --std 0.1 --covariance sigma.npy", "not allowed with"),
    ("sir.pt --inputs params.json --covariance missing.npy", "missing.npy: no such file"),
    ("sir.pt --inputs params.json --covariance vector.npy", "expected a square matrix"),
    ("sir.pt --inputs params.json --covariance small.npy", "expected a [3, 3] matrix"),
    ("sir.pt --inputs params.json --std 0.1 0.2", "expected one value or 3"),
    ("sir.pt --inputs params.json --std 0.1 -0.2 0.1", "expected finite values >= 0"),
    ("sir.pt --inputs params.json --std 0.1 --wrt beta", "'beta' is neither an input"),
    ("sir.pt --inputs params.json --std 0.1 --input-names a,b", "2 names given for 3"),
    ("sir.pt --inputs params.json --std 0.1 -o cov.csv", "-o"),
    ("sir.pt --inputs missing.json --std 0.1", "--inputs"),
    ("missing.pt --inputs params.json --std 0.1", "no such file, and not a model id"),
]


@pytest.mark.parametrize(("case", "expected"), USAGE_ERRORS, ids=[e for _, e in USAGE_ERRORS])
def test_usage_and_file_errors_exit_2(cli, argv, tmp_path, assert_one_line, case, expected):
    code, out, err = cli("propagate", *argv(case))
    assert_one_line(code, out, err, 2)
    assert expected in err, err
    assert not out and not (tmp_path / "cov.csv").exists()


@pytest.mark.parametrize(
    ("covariance", "expected"),
    [("asymmetric.npy", "expected a symmetric matrix"),
     ("indefinite.npy", "expected a positive semi-definite matrix")],
)  # fmt: skip
def test_a_covariance_the_server_refuses_exits_3(cli, files, assert_one_line, covariance, expected):
    code, out, err = cli("propagate", files["linear.pt"], "--inputs", files["xc.npz"],
                         "--wrt", "0", "--covariance", files[covariance])  # fmt: skip
    assert_one_line(code, out, err, 3)
    assert "the server refused" in err and expected in err, err


def test_a_real_process_exits_as_documented(process, files):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return process("propagate", files["linear.pt"], "--inputs", files["xc.npz"], "--wrt", "x",
                       *args)  # fmt: skip

    done = run("--std", "0.1")
    assert done.returncode == 0 and "x[2]" in done.stdout, done
    refused = run("--covariance", files["asymmetric.npy"])
    assert refused.returncode == 3 and "expected a symmetric matrix" in refused.stderr
    missing = run("--covariance", files["sigma.npy"] + ".missing")
    assert missing.returncode == 2 and missing.stderr.startswith("jacserve: --covariance")


def test_help_shows_examples_and_the_covariance_format(capsys):
    with pytest.raises(SystemExit) as done:
        main(["propagate", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "jacserve propagate docs/examples/sir.pt" in text and "--std S [S ...]" in text
    assert "positive semi-definite" in text and "Exit codes" in text
