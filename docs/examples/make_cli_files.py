"""Build the files that README.md's command-line examples read (they are committed, so
this is only needed after changing a model):

* ``sir.pt``: the SIR model of ``sir.py`` (3 inputs β, γ, I0 → the infected fraction on
  days 10…80), saved with ``torch.jit.save``;
* ``params.json``: its input, ``{"params": [β, γ, I0]}``;
* ``sir_groups.pt``: the age-group SIR model of ``sir_groups.py`` (6 initial infected
  fractions → ``[8, 6]`` infected fractions; parameters ``contacts`` and ``recovery``);
* ``x.npy``: its input, the initial infected fraction of each age group;
* ``w.npy``: weights of its output (``[8, 6]``: each group's hospitalisation rate on every
  report day), the cotangent of ``jacserve grad``.

Run from the repository root: ``python docs/examples/make_cli_files.py``.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import numpy as np
import torch

FOLDER = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(FOLDER))

from sir import SIR  # noqa: E402
from sir_groups import GroupSIR  # noqa: E402

PARAMS = {"params": [0.3, 0.1, 0.01]}  # β, γ, initial infected fraction
INITIAL_INFECTED = [0.0, 0.002, 0.004, 0.002, 0.0005, 0.0001]  # by age group
HOSPITALISATION = [0.001, 0.0005, 0.005, 0.02, 0.08, 0.2]  # by age group


def arrays() -> dict[str, np.ndarray]:
    """The contents of ``x.npy`` and ``w.npy``, by file name."""
    x = np.array(INITIAL_INFECTED, dtype=np.float64)
    w = np.tile(np.array(HOSPITALISATION, dtype=np.float64), (GroupSIR().days // 10, 1))
    return {"x.npy": x, "w.npy": w}


def _save_script(module: torch.nn.Module, path: pathlib.Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        torch.jit.save(torch.jit.script(module), str(path))


def build(folder: pathlib.Path = FOLDER) -> list[pathlib.Path]:
    """Write every file into ``folder``; returns their paths."""
    _save_script(SIR(), folder / "sir.pt")
    _save_script(GroupSIR(), folder / "sir_groups.pt")
    (folder / "params.json").write_text(json.dumps(PARAMS) + "\n")
    for name, values in arrays().items():
        np.save(folder / name, values)
    names = ("sir.pt", "params.json", "sir_groups.pt", *arrays())
    return [folder / name for name in names]


if __name__ == "__main__":
    for written in build():
        print(f"{written}: {written.stat().st_size} bytes")
