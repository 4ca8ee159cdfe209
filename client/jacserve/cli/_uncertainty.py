"""``jacserve propagate`` and ``jacserve fisher``: the covariance of the varied inputs
(from a file or ``--std``), the noise covariance, and labels and summaries of the
parameter (or input) elements of a Fisher information.

A covariance file (``--covariance``, ``--noise-covariance``) holds one square matrix:
``.npy``, ``.npz`` or ``.pt`` with one array, or ``.json`` with nested lists (or an
object with one entry). ``--std S ...`` gives a diagonal covariance: one standard
deviation for every varied element, or one per element.

>>> import pathlib, tempfile, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "cov.json"
>>> _ = path.write_text("[[1e-4, 0], [0, 4e-4]]")
>>> input_covariance(path, None, 2, "--covariance", torch.float64).diagonal().tolist()
[0.0001, 0.0004]
>>> input_covariance(None, [0.5], 3, "--std", torch.float32).diagonal().tolist()
[0.25, 0.25, 0.25]
>>> try:
...     input_covariance(path, None, 3, "--covariance", torch.float64)
... except InputError as exc:
...     print(str(exc).replace(str(path), "cov.json"))  # doctest: +NORMALIZE_WHITESPACE
--covariance cov.json: expected a [3, 3] matrix (the 3 varied input elements, flattened in
order); got [2, 2]
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from jacserve.cli._io import InputError, read_tensors

__all__ = [
    "dominant_elements",
    "eigenvectors",
    "fisher_labels",
    "input_covariance",
    "read_matrix",
    "slice_name",
]


def read_matrix(path: str | pathlib.Path, what: str, dtype: torch.dtype) -> torch.Tensor:
    """The one square matrix a covariance file holds; ``InputError`` names what is wrong.

    >>> import pathlib, tempfile
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "v.json"
    >>> _ = bad.write_text("[1, 2, 3]")
    >>> try:
    ...     read_matrix(bad, "--noise-covariance", torch.float64)
    ... except InputError as exc:
    ...     print(str(exc).replace(str(bad), "v.json"))
    --noise-covariance v.json: expected a square matrix; got shape [3]
    """
    _, tensors = read_tensors(path, dtype=dtype, what=what)
    label = f"{what} {path}"
    if len(tensors) != 1:
        raise InputError(f"{label}: expected one matrix; got {len(tensors)} arrays")
    (matrix,) = tensors
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"{label}: expected a square matrix; got shape {list(matrix.shape)}")
    if not (matrix.is_floating_point() or matrix.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{label}: expected real numbers; got {matrix.dtype}")
    if not bool(matrix.isfinite().all()):
        raise InputError(f"{label}: expected finite entries; got NaN or infinite ones")
    return matrix


def input_covariance(
    path: str | pathlib.Path | None,
    stds: Sequence[float] | None,
    count: int,
    what: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Σ ``[count, count]`` over the varied input elements: the matrix in ``path``, or
    ``diag(stds²)`` (one std for every element, or one per element)."""
    if path is not None:
        matrix = read_matrix(path, what, dtype)
        if matrix.shape[0] != count:
            raise InputError(
                f"{what} {path}: expected a [{count}, {count}] matrix (the {count} varied "
                f"input elements, flattened in order); got {list(matrix.shape)}"
            )
        return matrix
    values = list(stds or ())
    if len(values) not in (1, count):
        raise InputError(
            f"--std: expected one value or {count} (one per varied input element); "
            f"got {len(values)}"
        )
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise InputError(f"--std: expected finite values >= 0; got {' '.join(map(str, values))}")
    std = torch.tensor(values * (count if len(values) == 1 else 1), dtype=torch.float64)
    return torch.diag(std**2)


def _element_label(name: str, shape: Sequence[int], index: int) -> str:
    """``name`` for one element, ``name[i]`` along one axis, ``name[i, j]`` beyond."""
    if math.prod(shape) == 1:
        return name
    if len(shape) == 1:
        return f"{name}[{index}]"
    where = torch.unravel_index(torch.tensor(index), tuple(shape))
    return f"{name}[{', '.join(str(int(i)) for i in where)}]"


def fisher_labels(
    slices: Sequence[Any],
    input_names: Sequence[str] = (),
    positions: Sequence[int] = (),
) -> list[str]:
    """A label per element along the Fisher information's axis: ``weight[0, 1]``, or,
    for an input named by ``--wrt`` (slice ``input[k]``), that input's name in
    ``--inputs`` (``params[2]``).

    >>> from jacserve.client import ParameterSlice
    >>> fisher_labels([ParameterSlice("weight", 0, 2, (1, 2)), ParameterSlice("bias", 2, 3, (1,))])
    ['weight[0, 0]', 'weight[0, 1]', 'bias']
    >>> fisher_labels([ParameterSlice("input[0]", 0, 2, (2,))], ["params"], [0])
    ['params[0]', 'params[1]']
    """
    labels = []
    for piece in slices:
        name = slice_name(piece, input_names, positions)
        labels += [_element_label(name, piece.shape, i) for i in range(piece.stop - piece.start)]
    return labels


def slice_name(piece: Any, input_names: Sequence[str], positions: Sequence[int]) -> str:
    """A slice's name: the parameter's, or for ``input[k]`` the name of input k in
    ``--inputs`` when it has one (and k is among ``positions``)."""
    for p in positions:
        if piece.name == f"input[{p}]" and p < len(input_names) and input_names[p]:
            return input_names[p]
    return piece.name


def eigenvectors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues (largest first) and eigenvectors (columns, each signed so that
    its largest component is positive) of a symmetric matrix.

    >>> values, vectors = eigenvectors(torch.tensor([[2.0, 0.0], [0.0, 5.0]]))
    >>> values.tolist(), vectors[:, 0].tolist()
    ([5.0, 2.0], [0.0, 1.0])
    """
    values, vectors = torch.linalg.eigh(matrix.detach().double().cpu())
    values, vectors = values.flip(0), vectors.flip(1)
    largest = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[largest, torch.arange(vectors.shape[1])])
    return values, vectors * torch.where(signs == 0, 1.0, signs)


def dominant_elements(vectors: torch.Tensor, labels: Sequence[str]) -> list[tuple[str, float]]:
    """The label and weight of each eigenvector's largest component (its dominant
    parameter element).

    >>> dominant_elements(torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64), ["a", "b"])
    [('b', 0.8), ('a', -0.8)]
    """
    largest = vectors.abs().argmax(dim=0).tolist()
    return [(labels[j], float(vectors[j, k])) for k, j in enumerate(largest)]
