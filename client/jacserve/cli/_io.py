"""Reading inputs and writing results for the command line.

Inputs: ``.npy`` (one array), ``.npz`` (one array per model input, in file order, named by
key), ``.pt`` (a tensor, or a list/tuple/dict of tensors, loaded with
``weights_only=True``), ``.json`` (a nested list for one input, or an object of them).
Results: ``.npy`` (the command's primary result: the Jacobian, the gradient, …), ``.npz``,
``.pt`` or ``.json`` (every tensor, by name; JSON adds the metrics).

A file that cannot be used raises ``InputError`` with one line that names it: the
command line prints that line and exits 2.

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
>>> _ = path.write_text('{"beta": [0.3], "gamma": [0.1]}')
>>> names, tensors = read_tensors(path, dtype=torch.float64)
>>> names, [t.tolist() for t in tensors]
(['beta', 'gamma'], [[0.3], [0.1]])
>>> _ = path.write_text('{"beta": [0.3,')
>>> try:
...     read_tensors(path, what="--inputs")
... except InputError as exc:
...     print(str(exc).replace(str(path), "x.json"))
--inputs x.json: cannot read tensors (Expecting value: line 1 column 15 (char 14))
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from jacserve.cli._parser import one_line

__all__ = ["OUTPUT_SUFFIXES", "InputError", "check_output", "read_tensors", "write_results"]

OUTPUT_SUFFIXES = (".npy", ".npz", ".pt", ".json")


class InputError(Exception):
    """A file or flag the command line cannot use; the message says why and what works."""


def readable_file(path: str | pathlib.Path, what: str = "") -> pathlib.Path:
    """``path`` if it names a file this process may read, else ``InputError``.

    >>> try:
    ...     readable_file("/nonexistent/x.npy", "--inputs")
    ... except InputError as exc:
    ...     print(exc)
    --inputs /nonexistent/x.npy: no such file
    """
    path = pathlib.Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.exists():
        raise InputError(f"{label}: no such file")
    if not path.is_file():
        raise InputError(f"{label}: not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputError(f"{label}: cannot read it ({exc.strerror or one_line(exc)})") from None
    return path


def read_tensors(
    path: str | pathlib.Path, *, dtype: torch.dtype = torch.float32, what: str = ""
) -> tuple[list[str], list[torch.Tensor]]:
    """Names (empty strings where the file has none) and tensors stored in ``path``;
    ``what`` (a flag such as ``--inputs``) prefixes error messages.

    Raises:
        InputError: missing or unreadable file, unknown suffix, content that is not
            tensors, or no tensors at all.
    """
    path = readable_file(path, what)
    label = f"{what} {path}" if what else str(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt", ".json"):
        raise InputError(
            f"{label}: expected a .npy, .npz, .pt or .json file; got {suffix or 'no suffix'}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's pickle-protocol notes and such
            names, tensors = _load(path, suffix, dtype)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None
    except pickle.UnpicklingError:
        raise InputError(
            f"{label}: not tensors that torch.load reads with weights_only=True"
        ) from None
    except Exception as exc:  # every parser's own error types: ValueError, EOFError, zip
        raise InputError(f"{label}: cannot read tensors ({one_line(exc)})") from None
    if not tensors:
        raise InputError(f"{label}: holds no tensors")
    return names, tensors


def _load(
    path: pathlib.Path, suffix: str, dtype: torch.dtype
) -> tuple[list[str], list[torch.Tensor]]:
    """The names and tensors of a file of a known suffix (errors are the parsers')."""
    if suffix == ".npy":
        with path.open("rb") as file:
            if file.read(6) != b"\x93NUMPY":
                raise InputError("not a .npy file (it lacks the NUMPY header np.save writes)")
        return [""], [torch.from_numpy(np.load(path, allow_pickle=False))]
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files), [torch.from_numpy(archive[k]) for k in archive.files]
    if suffix == ".pt":
        return _named(torch.load(path, weights_only=True))
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, Mapping):
        return list(data), [_json_tensor(v, dtype) for v in data.values()]
    return [""], [_json_tensor(data, dtype)]


def _json_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A JSON number or (nested, rectangular) list of numbers as a tensor."""
    try:
        return torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            "expected numbers: a number, nested lists of them, or an object of those (an "
            "entry per model input)"
        ) from None


def _named(value: Any) -> tuple[list[str], list[torch.Tensor]]:
    """A loaded ``.pt`` value as names and tensors: a tensor, or a list or dict of them."""
    if isinstance(value, torch.Tensor):
        return [""], [value]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence):
        items = [("", v) for v in value]
    else:
        items = []
    if not items or not all(isinstance(v, torch.Tensor) for _, v in items):
        raise InputError("expected a tensor, or a list or dict of tensors")
    return [str(k) for k, _ in items], [v for _, v in items]


def check_output(path: str | pathlib.Path, suffixes: Sequence[str], what: str) -> pathlib.Path:
    """``path`` if a result can be written there: a known suffix, an existing folder.

    >>> try:
    ...     check_output("j.txt", OUTPUT_SUFFIXES, "-o")
    ... except InputError as exc:
    ...     print(exc)
    -o j.txt: expected a .npy, .npz, .pt or .json file; got .txt
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        known = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else ""
        raise InputError(f"{what} {path}: expected a {known} file; got {suffix or 'no suffix'}")
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{what} {path}: no folder {folder}")
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder")
    return path


def _flatten(name: str, value: Any) -> dict[str, torch.Tensor]:
    """Named leaves of a result of any structure: ``jacobian.logits.0`` and so on.

    >>> sorted(_flatten("jacobian", {"a": torch.ones(1), "b": (torch.ones(1), torch.ones(1))}))
    ['jacobian.a', 'jacobian.b.0', 'jacobian.b.1']
    """
    if isinstance(value, torch.Tensor):
        return {name: value}
    items = value.items() if isinstance(value, Mapping) else enumerate(value)
    flat: dict[str, torch.Tensor] = {}
    for key, item in items:
        flat.update(_flatten(f"{name}.{key}", item))
    return flat


def write_results(
    path: str | pathlib.Path,
    tensors: Mapping[str, Any],
    metrics: Any | None = None,
    primary: Callable[[], torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write named results (tensors, tuples or dicts of tensors) to ``path`` by suffix:
    ``.npy`` holds ``primary()`` (by default the first result, which must then be one
    tensor), ``.npz``, ``.pt`` and ``.json`` every tensor by name; ``.json`` adds the
    metrics and ``extra`` (values JSON writes: names, counts, a ranking).

    Raises:
        InputError: an unknown suffix, or a file that cannot be written.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "j.npy"
    >>> write_results(out, {"jacobian": torch.eye(2), "output": torch.ones(2)})
    >>> np.load(out).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    path = check_output(path, OUTPUT_SUFFIXES, "-o")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            np.save(path, _array(primary() if primary else _only(tensors)))
            return
        flat: dict[str, torch.Tensor] = {}
        for name, value in tensors.items():
            flat.update(_flatten(name, value))
        if suffix == ".npz":
            np.savez(path, **{k: _array(v) for k, v in flat.items()})
        elif suffix == ".pt":
            torch.save(flat, path)
        else:
            document: dict[str, Any] = {k: _array(v).tolist() for k, v in flat.items()}
            document.update(extra or {})
            if metrics is not None:
                document["metrics"] = dataclasses.asdict(metrics)
            path.write_text(json.dumps(document, indent=1))
    except OSError as exc:
        raise InputError(f"-o {path}: cannot write it ({exc.strerror or one_line(exc)})") from None


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _only(tensors: Mapping[str, Any]) -> torch.Tensor:
    """The first result, when it is one tensor."""
    name, value = next(iter(tensors.items()))
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{name} has several arrays; write .npz, .pt or .json for them")
    return value
