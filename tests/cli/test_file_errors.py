"""Usage and file errors of every ``jacserve`` command: exit 2 and one line on stderr,
never a traceback, and nothing sent to the server.

Run through ``main`` against a real server (and once as a real process), with files
that are missing, folders, unreadable, malformed or of an unknown kind.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from jacserve.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def _files(folder: pathlib.Path) -> dict[str, str]:
    """Good and bad files in ``folder``, by the name the cases below use."""
    shutil.copy(EXAMPLES / "sir.pt", folder / "sir.pt")
    shutil.copy(EXAMPLES / "params.json", folder / "params.json")
    (folder / "bad.json").write_text('{"params": [0.3,')
    (folder / "empty.json").write_text("{}")
    (folder / "words.json").write_text('{"params": ["high", "low"]}')
    (folder / "bad.npy").write_bytes(b"not an array")
    np.save(folder / "ok.npy", np.ones(100))
    (folder / "truncated.npy").write_bytes((folder / "ok.npy").read_bytes()[:150])
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    (folder / "bad.pt").write_bytes(pickle.dumps(pathlib.PurePosixPath("x")))
    (folder / "x.csv").write_text("1,2,3\n")
    (folder / "not-a-zip.pt").write_text("def forward(x): return x\n")
    (folder / "folder.npy").mkdir()
    names = {p.name: str(p) for p in folder.iterdir()}
    names["missing.npy"] = str(folder / "missing.npy")
    names["missing.pt"] = str(folder / "missing.pt")
    names["nowhere/J.npy"] = str(folder / "nowhere" / "J.npy")
    return names


# (arguments with file names from _files, a piece of the expected message)
CASES = [
    ("upload missing.pt", "missing.pt: no such file"),
    ("upload folder.npy", "folder.npy: not a file"),
    ("upload not-a-zip.pt", "not a model archive"),
    ("jacobian missing.pt --inputs params.json", "no such file, and not a model id"),
    ("jacobian sir.pt --inputs missing.npy", "--inputs"),
    ("jacobian sir.pt --inputs bad.json", "cannot read tensors (Expecting value"),
    ("jacobian sir.pt --inputs empty.json", "holds no tensors"),
    ("jacobian sir.pt --inputs words.json", "expected numbers"),
    ("jacobian sir.pt --inputs bad.npy", "not a .npy file"),
    ("jacobian sir.pt --inputs truncated.npy", "cannot read tensors"),
    ("jacobian sir.pt --inputs objects.npy", "cannot read tensors"),
    ("jacobian sir.pt --inputs x.csv", "expected a .npy, .npz, .pt or .json file; got .csv"),
    ("jacobian sir.pt --inputs params.json --sparsity missing.npy", "--sparsity"),
    ("jacobian sir.pt --inputs params.json -o nowhere/J.npy", "no folder"),
    ("jacobian sir.pt --inputs params.json -o x.csv", "-o"),
    ("jacobian sir.pt --inputs params.json --plot J.docx", "--plot"),
    ("jacobian sir.pt --inputs params.json --tls-ca missing.pt", "--tls-ca"),
    ("jacobian sir.pt --inputs params.json --shards 0", "shards must be >= 1"),
    ("jvp sir.pt --inputs params.json --tangents bad.pt", "weights_only=True"),
    ("jvp sir.pt --inputs bad.npz --tangents params.json", "cannot read tensors"),
    ("vjp sir.pt --inputs params.json --cotangents missing.npy", "--cotangents"),
    ("hvp sir.pt --inputs params.json --vectors bad.npz", "--vectors"),
    ("hessian sir.pt --inputs folder.npy", "not a file"),
    ("sensitivity sir.pt --inputs bad.json", "cannot read tensors"),
    ("spectrum sir.pt --inputs missing.npy", "no such file"),
    ("grad sir.pt --inputs params.json --cotangents truncated.npy", "--cotangents"),
    ("models show", "needs a model id"),
    ("models list --tls-ca missing.pt", "--tls-ca"),
    ("health --tls-ca missing.pt", "--tls-ca"),
    ("jacobian sir.pt", "the following arguments are required: --inputs"),
    ("jacobian sir.pt --inputs params.json --mode sideways", "invalid choice"),
    ("jvp sir.pt --inputs params.json --tangents params.json --plot j.png", "unrecognized"),
    ("", "the following arguments are required: COMMAND"),
]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``jacserve ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's usage errors
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_usage_error(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert not out, out


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[c or "nothing" for c, _ in CASES])
def test_usage_and_file_errors_exit_2_in_one_line(case, expected, server, tmp_path, capsys):
    files = _files(tmp_path)
    argv = [files.get(word, word) for word in case.split()]
    code, out, err = _cli([*argv, "--target", server.target] if argv else argv, capsys)
    _one_line_usage_error(code, out, err)
    assert expected in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_input_file_exits_2(server, tmp_path, capsys):
    files = _files(tmp_path)
    os.chmod(files["params.json"], 0)
    code, out, err = _cli(["jacobian", files["sir.pt"], "--inputs", files["params.json"],
                           "--target", server.target], capsys)  # fmt: skip
    _one_line_usage_error(code, out, err)
    assert "cannot read it" in err


def test_files_are_checked_before_any_call(tmp_path, capsys):
    """With no server at all, a file error is still a file error (2), not 4."""
    files = _files(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    for argv in (
        ["upload", files["missing.pt"]],
        ["jacobian", files["sir.pt"], "--inputs", files["bad.json"]],
        ["grad", files["sir.pt"], "--inputs", files["params.json"], "-o", files["x.csv"]],
    ):
        code, out, err = _cli([*argv, "--target", closed, "--timeout", "2"], capsys)
        _one_line_usage_error(code, out, err)


def test_plot_without_matplotlib_says_how_to_install_it(server, tmp_path, capsys, monkeypatch):
    files = _files(tmp_path)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    for command in ("jacobian", "sensitivity", "spectrum", "hessian"):
        code, out, err = _cli([command, files["sir.pt"], "--inputs", files["params.json"],
                               "--plot", str(tmp_path / "p.png"), "--target", server.target],
                              capsys)  # fmt: skip
        _one_line_usage_error(code, out, err)
        assert "--plot needs matplotlib: pip install 'jacserve[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_a_real_process_exits_2_without_a_traceback(tmp_path):
    """``jacserve upload missing.pt`` as a user runs it: README promises exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "jacserve.cli", "upload", str(tmp_path / "missing.pt")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "JACSERVE_TARGET": "127.0.0.1:9"},
    )  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr == f"jacserve: archive {tmp_path / 'missing.pt'}: no such file\n"
    assert not done.stdout
