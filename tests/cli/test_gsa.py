"""``jacserve gsa`` end to end against a real server: laws from flags and from files
(one per input, one per element), the ranking, ``-o`` in every format, the plots, and
its failures (a bad law file or a missing one: exit 2; a law the server refuses: exit 3).

Checked against what the SDK returns for the same seed, and against a linear model
whose indices have a closed form: y = A x with independent x_j, ν = A², and the bound is
the total index A_ij² Var x_j / Var y_i exactly for normal inputs ((b−a)²/π² over
(b−a)²/12 times it for uniform ones).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import subprocess

import numpy as np
import pytest
import torch

from jacserve.cli import main
from jacserve.client import Uniform
from tests.models import MatrixPlusOffset

ROOT = pathlib.Path(__file__).resolve().parents[2]
F64 = torch.float64
SIR_LAWS = [{"uniform": {"low": [0.24, 0.08, 0.008], "high": [0.36, 0.12, 0.012]}}]
DAYS = ",".join(f"day {10 * k}" for k in range(1, 9))
A = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=F64)


@pytest.fixture()
def extra_files(tmp_path: pathlib.Path) -> None:
    """Beside the SIR example: its law file, and y = A x + c (x varied, c not) at x = 0."""
    (tmp_path / "laws.json").write_text(json.dumps(SIR_LAWS))
    torch.jit.save(torch.jit.script(MatrixPlusOffset(A)), str(tmp_path / "linear.pt"))
    np.savez(tmp_path / "xc.npz", x=np.zeros(3), c=np.ones(2))


def test_sir_study_matches_the_sdk_and_writes_every_file(
    cli, client, files, tmp_path, assert_not_blank_png
):
    out_json, plot, decay = tmp_path / "gsa.json", tmp_path / "gsa.png", tmp_path / "decay.png"
    code, out, err = cli("gsa", files["sir.pt"], "--inputs", files["params.json"],
                         "--dtype", "float64", "--distribution", files["laws.json"],
                         "--input-names", "beta,gamma,I0", "--output-names", DAYS,
                         "--samples", "256", "--seed", "5", "--top", "2",
                         "--plot", str(plot), "--plot-eigenvalues", str(decay),
                         "-o", str(out_json))  # fmt: skip
    assert code == 0, err
    assert "global sensitivity: 256 samples, 8 outputs × 3 varied inputs" in out
    assert "top 2 inputs by total-index bound (the largest over outputs" in out
    ranked = re.findall(r"^\s+\d\. (\w+): ([\d.]+) ± \S+ at (day \d+)", out, re.M)
    assert [name for name, _, _ in ranked] == ["beta", "gamma"], out
    assert "day 30: mean" in out and "w1: I0" in out

    low, high = (torch.tensor(SIR_LAWS[0]["uniform"][k], dtype=F64) for k in ("low", "high"))
    nominal = torch.tensor([0.3, 0.1, 0.01], dtype=F64)
    sdk = client.global_sensitivity(files["sir.pt"], nominal, distribution=Uniform(low, high),
                                    samples=256, seed=5)  # fmt: skip
    saved = json.loads(out_json.read_text())
    for key in ("total_index_bound", "dgsm", "dgsm_std_error", "output_mean", "output_variance"):
        np.testing.assert_allclose(saved[key], getattr(sdk, key).numpy(), rtol=1e-9, err_msg=key)
    np.testing.assert_allclose(saved["eigenvalues"],
                               torch.stack([s.eigenvalues for s in sdk.active_subspace]).numpy(),
                               rtol=1e-9)  # fmt: skip
    assert np.asarray(saved["eigenvectors"]).shape == (8, 3, 3)
    assert saved["samples"] == 256 and saved["input_names"] == ["beta", "gamma", "I0"]
    assert saved["output_names"] == DAYS.split(",") and saved["metrics"]["passes"] > 0
    best = saved["ranking"][0]
    assert best["input"] == "beta" and best["bound"] == pytest.approx(float(ranked[0][1]), rel=1e-3)
    assert best["bound"] == pytest.approx(float(sdk.total_index_bound[:, 0].max()))
    assert best["output"] == ranked[0][2]
    for picture in (plot, decay):
        assert_not_blank_png(picture)


def test_npy_is_the_bounds_and_npz_every_array(cli, files, tmp_path, assert_not_blank_png):
    base = ["gsa", files["sir.pt"], "--inputs", files["params.json"], "--distribution",
            files["laws.json"], "--samples", "64", "--bootstrap", "0"]  # fmt: skip
    code, out, err = cli(*base, "-o", str(tmp_path / "bounds.npy"), "--output-index", "2",
                         "--plot", str(tmp_path / "day30.png"))  # fmt: skip
    assert code == 0, err
    assert "(for output[2];" in out and "output[0]: mean" not in out
    bounds = np.load(tmp_path / "bounds.npy")
    assert bounds.shape == (8, 3) and bounds.dtype == np.float64 and (bounds > 0).all()
    assert_not_blank_png(tmp_path / "day30.png")  # no bootstrap: no error bars, still a plot
    code, _, err = cli(*base, "-o", str(tmp_path / "all.npz"))
    assert code == 0, err
    with np.load(tmp_path / "all.npz") as saved:
        assert {"dgsm", "dgsm_std_error", "output_mean", "output_variance", "eigenvalues",
                "eigenvectors", "eigenvalue_lower", "eigenvalue_upper", "samples"} <= set(saved.files)  # fmt: skip
        # two calls: the server's thread count may differ, and with it the last digit
        np.testing.assert_allclose(saved["total_index_bound"], bounds, rtol=1e-12)
        assert np.isnan(saved["eigenvalue_lower"]).all()  # --bootstrap 0: no intervals


def test_normal_law_of_one_named_input_gives_the_linear_models_total_indices(cli, files, tmp_path):
    std = 0.5
    code, out, err = cli("gsa", files["linear.pt"], "--inputs", files["xc.npz"], "--wrt", "x",
                         "--normal", "0", str(std), "--samples", "512",
                         "-o", str(tmp_path / "linear.json"))  # fmt: skip
    assert code == 0, err
    assert "2 outputs × 3 varied inputs" in out
    assert sorted(re.findall(r"^\s+\d\. (\S+):", out, re.M)) == ["x[0]", "x[1]", "x[2]"], out
    saved = json.loads((tmp_path / "linear.json").read_text())
    np.testing.assert_allclose(saved["dgsm"], (A**2).numpy(), rtol=1e-12)
    variance = (A**2).sum(1, keepdim=True) * std**2
    total = A**2 * std**2 / variance  # the exact Sobol' total indices of a linear model
    np.testing.assert_allclose(saved["total_index_bound"], total.numpy(), rtol=0.05, atol=1e-12)
    np.testing.assert_allclose(saved["output_mean"], [1.0, 1.0], atol=0.02)  # c = 1 stays


def test_a_law_per_element_from_an_object_keyed_by_input_name(cli, files, tmp_path):
    low, high = [-1.0, 0.0, 2.0], [1.0, 4.0, 3.0]
    laws = tmp_path / "per-element.json"
    laws.write_text(json.dumps({"x": {"uniform": [low, high]}}))
    code, _, err = cli("gsa", files["linear.pt"], "--inputs", files["xc.npz"], "--wrt", "0",
                       "--distribution", str(laws), "--samples", "1024",
                       "-o", str(tmp_path / "out.json"))  # fmt: skip
    assert code == 0, err
    saved = json.loads((tmp_path / "out.json").read_text())
    width2 = (torch.tensor(high, dtype=F64) - torch.tensor(low, dtype=F64)) ** 2
    variance = (A**2 * width2 / 12).sum(1, keepdim=True)
    bound = A**2 * width2 / math.pi**2 / variance  # = 12/π² × the total index
    np.testing.assert_allclose(saved["total_index_bound"], bound.numpy(), rtol=0.02, atol=1e-12)


BAD_LAWS = [
    ('{"uniform": [0.1,', "not JSON"),
    ('[{"uniform": [0.2, 0.4]}, {"uniform": [0, 1]}]', "expected one law per varied input (1"),
    ('[{"triangular": [0, 1]}]', 'expected {"uniform"'),
    ('[{"normal": {"mean": 0.1}}]', "normal needs mean and std; got mean"),
    ('[{"uniform": {"low": ["a"], "high": [1]}}]', "must be a number or nested lists"),
    ('[{"uniform": {"low": [0, 0], "high": [1, 1]}}]', "has shape [2]; expected the input's"),
    ('{"beta": {"uniform": [0, 1]}}', "missing: params; unknown: beta"),
    ('"uniform"', "expected a law, a list of laws or an object of them"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_LAWS, ids=[e for _, e in BAD_LAWS])
def test_a_bad_law_file_exits_2_in_one_line(cli, files, tmp_path, assert_one_line, text, expected):
    (tmp_path / "bad.json").write_text(text)
    code, out, err = cli("gsa", files["sir.pt"], "--inputs", files["params.json"],
                         "--distribution", str(tmp_path / "bad.json"))  # fmt: skip
    assert_one_line(code, out, err, 2)
    assert expected in err and "bad.json" in err, err


# (arguments after "gsa", with file names from the files fixture; a piece of the message)
USAGE_ERRORS = [
    ("sir.pt --inputs params.json --distribution missing.json", "missing.json: no such file"),
    ("sir.pt --inputs missing.npy --uniform 0 1", "--inputs"),
    ("sir.pt --inputs params.json --distribution sir.pt", "expected a .json file; got .pt"),
    ("sir.pt --inputs params.json", "one of the arguments --uniform --normal --distribution"),
    ("sir.pt --inputs params.json --uniform 0 1 --normal 0 1", "not allowed with argument"),
    ("sir.pt --inputs params.json --uniform 0", "expected 2 arguments"),
    ("sir.pt --inputs params.json --uniform 0 1 --wrt beta", "'beta' is neither an input"),
    ("sir.pt --inputs params.json --uniform 0 1 --samples 1", "samples must be >= 2"),
    ("sir.pt --inputs params.json --uniform 0 1 --top 0", "--top must be >= 1"),
    ("sir.pt --inputs params.json --uniform 0 1 -o gsa.csv", "-o"),
    ("sir.pt --inputs params.json --uniform 0 1 --plot-eigenvalues d.docx", "--plot-eigenvalues"),
    ("sir.pt --inputs params.json --uniform 0 1 --input-names a,b", "2 names given for 3"),
    ("missing.pt --inputs params.json --uniform 0 1", "no such file, and not a model id"),
]


@pytest.mark.parametrize(("case", "expected"), USAGE_ERRORS, ids=[e for _, e in USAGE_ERRORS])
def test_usage_and_file_errors_exit_2(cli, argv, tmp_path, assert_one_line, case, expected):
    code, out, err = cli("gsa", *argv(case))
    assert_one_line(code, out, err, 2)
    assert expected in err, err
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".png", ".docx", ".csv")]


def test_a_law_the_server_refuses_exits_3_with_its_message(cli, files, assert_one_line):
    code, out, err = cli("gsa", files["sir.pt"], "--inputs", files["params.json"],
                         "--uniform", "0.3", "0.1")  # fmt: skip
    assert_one_line(code, out, err, 3)
    assert "the server refused" in err and "every high must exceed its low" in err, err
    (pathlib.Path(files["laws.json"])).write_text(json.dumps([{"normal": [0.3, -1.0]}]))
    code, out, err = cli("gsa", files["sir.pt"], "--inputs", files["params.json"],
                         "--distribution", files["laws.json"])  # fmt: skip
    assert_one_line(code, out, err, 3)
    assert "every std must be > 0" in err, err


def test_a_real_process_exits_3_and_2_as_documented(process, files):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return process("gsa", files["sir.pt"], "--inputs", files["params.json"], *args)

    refused = run("--uniform", "1", "1")
    assert refused.returncode == 3 and "every high must exceed its low" in refused.stderr
    missing = run("--distribution", files["laws.json"] + ".missing")
    assert missing.returncode == 2, missing
    assert (
        missing.stderr.startswith("jacserve: --distribution") and "no such file" in missing.stderr
    )


def test_readmes_global_sensitivity_example_runs_as_written(server, capsys, monkeypatch):
    """README's "Global sensitivity" paragraph: its code block, and its numbers."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Global sensitivity**") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"127.0.0.1:50051"' in code
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace("127.0.0.1:50051", server.target), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    beta, gamma, i0 = (float(v) for v in re.findall(r"[\d.]+e?-?\d*(?=[,\]])", printed))
    comment = re.search(r"day 30: β ([\d.]+), γ ([\d.]+), I0 ([\d.]+)", code).groups()
    assert [round(v, len(c) - 2) for v, c in zip((beta, gamma, i0), comment, strict=True)] == [
        float(c) for c in comment
    ], printed


def test_help_shows_examples_and_the_law_file_format(capsys):
    with pytest.raises(SystemExit) as done:
        main(["gsa", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "jacserve gsa docs/examples/sir.pt" in text and '{"uniform": {"low":' in text
    assert "--plot-eigenvalues" in text and "Exit codes" in text
