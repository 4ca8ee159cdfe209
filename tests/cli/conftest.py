"""Shared setup of the command-line tests that run ``jacserve`` against the session's
server: the command in this process or in a real one, the files a test names (the SIR
example and what the test module writes), and checks of its failures and plots.

A module that uses ``files`` defines ``extra_files``, a fixture that writes its own
files into ``tmp_path``.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from matplotlib import image as mpimg

from jacserve.cli import main

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture()
def cli(server: Any, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[Any, str, str]]:
    """``jacserve ARGS --target <test server>`` in this process: (exit code, out, err)."""

    def run(*args: str) -> tuple[Any, str, str]:
        try:
            code = main([*args, "--target", server.target])
        except SystemExit as done:  # argparse's usage errors
            code = done.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture()
def process(server: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``python -m jacserve.cli ARGS --target <test server>`` as a real process."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jacserve.cli", *args, "--target", server.target],
            capture_output=True, text=True, timeout=120, env=dict(os.environ),
        )  # fmt: skip

    return run


@pytest.fixture()
def files(tmp_path: pathlib.Path, extra_files: None) -> dict[str, str]:
    """Every file in ``tmp_path`` by name: the SIR example (``sir.pt``, ``params.json``)
    and what the module's ``extra_files`` wrote."""
    for name in ("sir.pt", "params.json"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    return {p.name: str(p) for p in tmp_path.iterdir()}


@pytest.fixture()
def argv(files: dict[str, str], tmp_path: pathlib.Path) -> Callable[[str], list[str]]:
    """The words of a case, file names (not numbers) as the paths of ``files``, or under
    ``tmp_path`` for files that are not there."""

    def words(case: str) -> list[str]:
        return [
            files.get(word, str(tmp_path / word) if re.search(r"\.[a-z]", word) else word)
            for word in case.split()
        ]

    return words


def _one_line(code: Any, out: str, err: str, expected_code: int) -> None:
    assert code == expected_code, (code, out, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err


def _not_blank_png(path: str | pathlib.Path) -> None:
    pixels = mpimg.imread(path)
    assert min(pixels.shape[:2]) >= 200, pixels.shape
    assert float(pixels[..., :3].std()) > 0.05, "the image is blank"


@pytest.fixture()
def assert_one_line() -> Callable[[Any, str, str, int], None]:
    """A check that a run exited with the expected code and one line on stderr (no
    traceback)."""
    return _one_line


@pytest.fixture()
def assert_not_blank_png() -> Callable[[str | pathlib.Path], None]:
    """A check that a PNG file is at least 200 pixels each way and not blank."""
    return _not_blank_png
