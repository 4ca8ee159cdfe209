"""``jacserve gsa``: the laws of the varied inputs (from flags or a JSON file), and the
ranking and summary of a global sensitivity result.

A law file (``--distribution FILE.json``) gives one law per varied input: a list in
``--wrt`` order, an object keyed by the input names of ``--inputs`` (its JSON or npz
keys), or one law alone when one input varies. A law is ``{"uniform": {"low": L,
"high": H}}`` or ``{"normal": {"mean": M, "std": S}}`` (``{"uniform": [L, H]}`` and
``{"normal": [M, S]}`` also do); each parameter is a number, or nested lists shaped like
the input (or broadcasting to its shape), so each element may have a law of its own.

>>> import json, pathlib, tempfile, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "laws.json"
>>> _ = path.write_text(json.dumps({"params": {"uniform": {"low": [0.24, 0.08, 0.008],
...                                                       "high": [0.36, 0.12, 0.012]}}}))
>>> (law,) = read_laws(path, ["params"], [torch.Size([3])])
>>> type(law).__name__, law.high.tolist()
('Uniform', [0.36, 0.12, 0.012])
>>> _ = path.write_text('[{"uniform": [1, 2]}, {"normal": {"mean": 0}}]')
>>> try:
...     read_laws(path, ["a", "b"], [torch.Size([]), torch.Size([])])
... except InputError as exc:
...     print(str(exc).replace(str(path), "laws.json"))
--distribution laws.json: law 2 (b): normal needs mean and std; got mean
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jacserve.cli._io import InputError, readable_file
from jacserve.client import Normal, Uniform

__all__ = [
    "Ranked",
    "element_labels",
    "output_labels",
    "rank_inputs",
    "read_laws",
    "varied_positions",
]

_PARAMETERS = {"uniform": ("low", "high"), "normal": ("mean", "std")}


def varied_positions(
    wrt: str | None, names: Sequence[str], inputs: Sequence[torch.Tensor]
) -> list[int]:
    """The positions of the varied inputs: ``--wrt`` (comma-separated positions or names
    of ``--inputs``' entries), else every floating input.

    >>> varied_positions("gamma,0", ["beta", "gamma"], [torch.ones(1), torch.ones(1)])
    [1, 0]
    >>> varied_positions(None, ["", ""], [torch.ones(1), torch.ones(1, dtype=torch.int64)])
    [0]
    """
    if not wrt:
        return [i for i, t in enumerate(inputs) if t.is_floating_point()]
    positions = []
    for word in (w.strip() for w in wrt.split(",")):
        if word in names and word:
            positions.append(list(names).index(word))
        elif word.isdigit() and int(word) < len(inputs):
            positions.append(int(word))
        else:
            known = ", ".join(n for n in names if n) or "none"
            raise InputError(
                f"--wrt {wrt}: {word!r} is neither an input position (0 to {len(inputs) - 1}) "
                f"nor an input name (names: {known})"
            )
    if len(set(positions)) != len(positions):
        raise InputError(f"--wrt {wrt}: an input is named twice")
    return positions


def read_laws(
    path: str | pathlib.Path, names: Sequence[str], shapes: Sequence[torch.Size]
) -> list[Uniform | Normal]:
    """The laws in a ``--distribution`` file, one per varied input (``names`` and
    ``shapes`` are the varied inputs', in order); ``InputError`` names what is wrong."""
    path = readable_file(path, "--distribution")
    label = f"--distribution {path}"
    if path.suffix.lower() != ".json":
        raise InputError(f"{label}: expected a .json file; got {path.suffix or 'no suffix'}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: not JSON ({str(exc).splitlines()[0]})") from None
    if isinstance(document, Mapping) and set(document) & set(_PARAMETERS):
        document = [document]  # one law alone
    if isinstance(document, Mapping):
        missing = [n or str(i) for i, n in enumerate(names) if n not in document]
        unknown = [k for k in document if k not in names]
        if missing or unknown:
            raise InputError(
                f"{label}: expected a law for each varied input ({', '.join(names)}); "
                + (f"missing: {', '.join(missing)}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown: {', '.join(unknown)}" if unknown else "")
            )
        document = [document[n] for n in names]
    if not isinstance(document, list):
        raise InputError(f"{label}: expected a law, a list of laws or an object of them")
    if len(document) != len(shapes):
        raise InputError(
            f"{label}: expected one law per varied input ({len(shapes)}: "
            f"{', '.join(n or str(i) for i, n in enumerate(names))}); got {len(document)}"
        )
    laws = []
    for index, (entry, name, shape) in enumerate(zip(document, names, shapes, strict=True)):
        where = f"{label}: law {index + 1}" + (f" ({name})" if name else "")
        laws.append(_law(entry, shape, where))
    return laws


def _law(entry: Any, shape: torch.Size, where: str) -> Uniform | Normal:
    """One law of a law file, its parameters checked to broadcast to ``shape``."""
    if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in _PARAMETERS:
        raise InputError(
            f'{where}: expected {{"uniform": {{"low": …, "high": …}}}} or '
            f'{{"normal": {{"mean": …, "std": …}}}}'
        )
    kind, values = next(iter(entry.items()))
    wanted = _PARAMETERS[kind]
    if isinstance(values, list) and len(values) == 2:
        values = dict(zip(wanted, values, strict=True))
    if not isinstance(values, Mapping) or set(values) != set(wanted):
        got = ", ".join(values) if isinstance(values, Mapping) else type(values).__name__
        raise InputError(f"{where}: {kind} needs {' and '.join(wanted)}; got {got or 'nothing'}")
    tensors = []
    for key in wanted:
        try:
            tensor = torch.tensor(values[key], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(
                f"{where}: {kind} {key} must be a number or nested lists of numbers"
            ) from None
        try:
            fits = torch.broadcast_shapes(tensor.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise InputError(
                f"{where}: {kind} {key} has shape {list(tensor.shape)}; expected the input's "
                f"shape {list(shape)} (or one that broadcasts to it)"
            ) from None
        tensors.append(tensor)
    return Uniform(*tensors) if kind == "uniform" else Normal(*tensors)


def element_labels(
    names: Sequence[str], inputs: Sequence[torch.Tensor], positions: Sequence[int]
) -> list[str]:
    """A label per varied input element, in the result's column order: ``beta`` for a
    one-element input, ``params[2]`` for an element of a larger one.

    >>> element_labels(["params", ""], [torch.ones(2), torch.ones(1)], [0, 1])
    ['params[0]', 'params[1]', 'input1']
    """
    labels = []
    for position in positions:
        name = names[position] or f"input{position}"
        count = inputs[position].numel()
        labels += [name] if count == 1 else [f"{name}[{i}]" for i in range(count)]
    return labels


def output_labels(output_names: Sequence[str], count: int) -> list[str]:
    """A label per output element: ``output[i]`` (``name[i]`` for one named output).

    >>> output_labels([""], 2), output_labels(["loss"], 1)
    (['output[0]', 'output[1]'], ['loss'])
    """
    name = output_names[0] if len(output_names) == 1 and output_names[0] else "output"
    if count == 1:
        return [name]
    return [f"{name}[{i}]" for i in range(count)]


@dataclass(frozen=True)
class Ranked:
    """One varied input element in the ranking: its column, its total-index bound (for
    the chosen output, or the largest over outputs) with its standard error, and the
    output (row) where that bound is."""

    column: int
    bound: float
    std_error: float
    row: int


def rank_inputs(
    bounds: torch.Tensor, dgsm: torch.Tensor, std_error: torch.Tensor, row: int | None = None
) -> list[Ranked]:
    """The varied input elements ranked by their total-index bound, largest first: for
    output ``row``, or the largest over outputs. A bound's standard error is the DGSM's,
    scaled as the bound is (the bound is proportional to ν).

    >>> ranked = rank_inputs(torch.tensor([[0.125, 0.5], [0.25, 0.125]]), torch.ones(2, 2),
    ...                      torch.full((2, 2), 0.1))
    >>> [(r.column, r.bound, r.row) for r in ranked]
    [(1, 0.5, 0), (0, 0.25, 1)]
    """
    bounds, dgsm, std_error = (t.detach().double().cpu() for t in (bounds, dgsm, std_error))
    rows = (
        torch.full((bounds.shape[1],), row, dtype=torch.long)
        if row is not None
        else bounds.nan_to_num(-1.0).argmax(dim=0)
    )
    ranked = []
    for column in range(bounds.shape[1]):
        i = int(rows[column])
        value, nu = float(bounds[i, column]), float(dgsm[i, column])
        error = value * float(std_error[i, column]) / nu if nu > 0 else 0.0
        ranked.append(Ranked(column, value, error, i))
    return sorted(ranked, key=lambda r: (-r.bound if r.bound == r.bound else 1.0, r.column))
