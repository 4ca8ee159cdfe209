"""Reading inputs and writing results for the command line.

Inputs: ``.npy`` (one array), ``.npz`` (one array per model input, in file order, named by
key), ``.pt`` (a tensor, or a list/tuple/dict of tensors, loaded with
``weights_only=True``), ``.json`` (a nested list for one input, or an object of them).
Results: ``.npy`` (the one result tensor), ``.npz``, ``.pt`` or ``.json`` (every tensor,
by name; JSON adds the metrics).

>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.json"
>>> _ = path.write_text('{"beta": [0.3], "gamma": [0.1]}')
>>> names, tensors = read_tensors(path, dtype=torch.float64)
>>> names, [t.tolist() for t in tensors]
(['beta', 'gamma'], [[0.3], [0.1]])
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["InputError", "read_tensors", "write_results"]


class InputError(Exception):
    """A file the command line cannot use; the message says why and what works."""


def read_tensors(
    path: str | pathlib.Path, *, dtype: torch.dtype = torch.float32
) -> tuple[list[str], list[torch.Tensor]]:
    """Names (empty strings where the file has none) and tensors stored in ``path``.

    Raises:
        InputError: missing file, unknown suffix, or content that is not tensors.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return [""], [torch.from_numpy(np.load(path, allow_pickle=False))]
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return list(archive.files), [torch.from_numpy(archive[k]) for k in archive.files]
        if suffix == ".pt":
            return _named(torch.load(path, weights_only=True), path)
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, Mapping):
                return list(data), [torch.tensor(v, dtype=dtype) for v in data.values()]
            return [""], [torch.tensor(data, dtype=dtype)]
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise InputError(f"{path}: cannot read tensors ({exc})") from None
    raise InputError(
        f"{path}: expected a .npy, .npz, .pt or .json file; got {suffix or 'no suffix'}"
    )


def _named(value: Any, path: pathlib.Path) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [""], [value]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence):
        items = [("", v) for v in value]
    else:
        items = []
    if not items or not all(isinstance(v, torch.Tensor) for _, v in items):
        raise InputError(f"{path}: expected a tensor, or a list or dict of tensors")
    return [str(k) for k, _ in items], [v for _, v in items]


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
    path: str | pathlib.Path, tensors: Mapping[str, Any], metrics: Any | None = None
) -> None:
    """Write named results (tensors, tuples or dicts of tensors) to ``path`` by suffix.

    Raises:
        InputError: an unknown suffix, or ``.npy`` for more than one tensor.
    """
    path = pathlib.Path(path)
    flat: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        flat.update(_flatten(name, value))
    arrays = {k: v.detach().cpu().numpy() for k, v in flat.items()}
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(arrays) != 1:
            raise InputError(
                f"{path}: .npy holds one array but the result has {len(arrays)} "
                f"({', '.join(arrays)}); use .npz, .pt or .json"
            )
        np.save(path, next(iter(arrays.values())))
    elif suffix == ".npz":
        np.savez(path, **arrays)
    elif suffix == ".pt":
        torch.save(flat, path)
    elif suffix == ".json":
        document: dict[str, Any] = {k: v.tolist() for k, v in arrays.items()}
        if metrics is not None:
            document["metrics"] = dataclasses.asdict(metrics)
        path.write_text(json.dumps(document, indent=1))
    else:
        raise InputError(f"{path}: expected a .npy, .npz, .pt or .json output; got {suffix}")
