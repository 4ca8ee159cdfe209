"""README.md's command-line examples run as written, from files the repository ships.

The ```bash block of README's "Command line" section is read line by line (a trailing
backslash continues a line, ``#`` starts a comment, ``NAME=$(jacserve …)`` keeps what a
command prints), and every command is run through ``jacserve``'s ``main`` from a copy of
the repository's ``docs/examples`` against a real server on a loopback port, found as
README says a user's server is found (``JACSERVE_TARGET``).
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from torch.func import jacrev

from jacserve.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
_ASSIGNMENT = re.compile(r"(?P<name>[A-Z_][A-Z0-9_]*)=\$\((?P<command>[^)]*)\)")


def readme_commands() -> list[str]:
    """The logical lines of the ```bash block of README's "Command line" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Command line") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _argv(words: list[str], variables: dict[str, str]) -> list[str]:
    """``jacserve``'s arguments of one command, with ``$NAME`` replaced by its value."""
    assert words[0] == "jacserve", f"not a jacserve command: {words}"
    return [variables[w[1:]] if w.startswith("$") else w for w in words[1:]]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run_readme(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Run every README command in the current folder; returns each one's stdout by line."""
    variables: dict[str, str] = {}
    printed: dict[str, str] = {}
    for line in readme_commands():
        assigned = _ASSIGNMENT.fullmatch(line.split("#")[0].strip())
        command = assigned.group("command") if assigned else line
        code, out, err = _run(_argv(shlex.split(command, comments=True), variables), capsys)
        assert code == 0, f"{line}\nexit {code}\n{err}"
        assert "Traceback" not in err, err
        if assigned:
            variables[assigned.group("name")] = out.strip()
        printed[line] = out
    return printed


def _not_blank_png(path: pathlib.Path) -> None:
    pixels = mpimg.imread(path)
    assert min(pixels.shape[:2]) >= 200, pixels.shape
    assert float(pixels[..., :3].std()) > 0.05, f"{path.name} is blank"


def _examples() -> object:
    """The example models' module (``docs/examples`` on the path, as the guides do)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_cli_files
    finally:
        sys.path.remove(str(EXAMPLES))
    return make_cli_files


@pytest.fixture()
def in_a_copy_of_the_repository(tmp_path, monkeypatch, server):
    """The current folder holds a copy of docs/examples (the README's outputs land in
    it, not in the repository); jacserve finds the test server through the environment."""
    shutil.copytree(EXAMPLES, tmp_path / "docs" / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JACSERVE_TARGET", server.target)
    return tmp_path


def test_readme_shows_commands_of_shipped_files():
    lines = readme_commands()
    assert len(lines) >= 5 and all(re.match(r"(\w+=\$\()?jacserve ", line) for line in lines)
    for line in lines:
        for word in shlex.split(line.split("$(")[-1].rstrip(")"), comments=True):
            if re.search(r"\.(pt|pt2|json|npy|npz)$", word) and word.startswith("docs/"):
                assert (ROOT / word).is_file(), f"README uses {word}, which is not shipped"
    readme = (ROOT / "README.md").read_text()
    assert "python docs/examples/make_cli_files.py" in readme


def test_readme_cli_examples_run_as_written(in_a_copy_of_the_repository, capsys):
    folder = in_a_copy_of_the_repository
    printed = run_readme(capsys)
    outputs = "".join(printed.values())
    uploads = [out.strip() for line, out in printed.items() if "upload" in line]
    assert uploads and all(re.fullmatch(r"[0-9a-f]{64}", u) for u in uploads), uploads

    sir = _examples().SIR()
    params = torch.tensor(json.loads((EXAMPLES / "params.json").read_text())["params"],
                          dtype=torch.float64)  # fmt: skip
    with np.load(folder / "jacobian.npz") as saved:
        np.testing.assert_allclose(saved["output"], sir(params).numpy(), rtol=1e-10)
        np.testing.assert_allclose(saved["jacobian"], jacrev(sir)(params).numpy(), rtol=1e-8)
        primary = np.load(folder / "J.npy")  # float32: JSON numbers read as such
        assert primary.shape == (8, 3)
        np.testing.assert_allclose(primary, saved["jacobian"], rtol=2e-3, atol=1e-6)
    assert "top 3 inputs by elasticity" in outputs
    assert "gradients of 2 parameters" in outputs and "contacts: shape [6, 6]" in outputs
    assert re.search(r"σ5 = \S+", outputs), outputs
    for picture in ("sensitivity.png", "grads.png", "spectrum.png"):
        _not_blank_png(folder / picture)


def test_shipped_files_are_what_make_cli_files_builds():
    """The committed archives compute the models of sir.py and sir_groups.py, and the
    committed inputs are the builder's (so rebuilding changes nothing that matters)."""
    builder = _examples()
    assert json.loads((EXAMPLES / "params.json").read_text()) == builder.PARAMS
    for name, values in builder.arrays().items():
        np.testing.assert_array_equal(np.load(EXAMPLES / name), values)
    params = torch.tensor(builder.PARAMS["params"], dtype=torch.float64)
    x = torch.from_numpy(builder.arrays()["x.npy"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sir, groups = (torch.jit.load(str(EXAMPLES / f)) for f in ("sir.pt", "sir_groups.pt"))
    torch.testing.assert_close(sir(params), builder.SIR()(params))
    torch.testing.assert_close(groups(x), builder.GroupSIR()(x).detach())
