"""Results of any structure as the one array a ``.npy`` file or a heatmap holds.

A Jacobian or Hessian that is one tensor stays as it is (laid out as
``torch.autograd.functional.jacobian``); a structured one (several inputs or outputs)
becomes the ``[M, N]`` matrix over all output and input entries, in order. A structured
vector result (a JVP of a dict output, the gradients of every parameter) becomes its
leaves flattened and concatenated in order, so that it is that matrix's product.

>>> matrix((torch.ones(2), torch.ones(1)), ((torch.eye(2),), (torch.ones(1, 2),))).shape
torch.Size([3, 2])
>>> flat({"w": torch.ones(2, 2), "b": torch.zeros(2)}).tolist()
[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from jacserve.cli._io import InputError

__all__ = ["dense", "first", "flat", "jacobian_array", "leaves", "matrix"]

_DENSE_LIMIT = 1 << 27  # elements of a sparse Jacobian written densely to .npy (1 GiB)


def leaves(value: Any) -> list[torch.Tensor]:
    """The tensors of a result, depth first (dicts in insertion order)."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, Mapping) else value
    return [leaf for item in items for leaf in leaves(item)]


def first(value: Any) -> torch.Tensor:
    """The first tensor of a result of any structure (the summary shows that one)."""
    return leaves(value)[0]


def flat(value: Any) -> torch.Tensor:
    """One tensor as itself; several flattened and concatenated in order."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.cat([leaf.reshape(-1) for leaf in leaves(value)])


def matrix(row_tensors: Any, blocks: Any) -> torch.Tensor:
    """Blocks structured like ``torch.autograd.functional.jacobian`` (a tensor, a tuple
    per row tensor, or a tuple of tuples) as one matrix: a row per element of
    ``row_tensors`` (the outputs; the inputs for a Hessian), entries flattened in order."""
    if isinstance(row_tensors, dict):  # a dict output: its entries in order
        blocks = tuple(blocks[key] for key in row_tensors)
        row_tensors = tuple(row_tensors.values())
    tuple_rows = isinstance(row_tensors, tuple | list)
    rows = blocks if tuple_rows else (blocks,)
    rows = [
        tuple(row.values()) if isinstance(row, dict) else row if isinstance(row, tuple) else (row,)
        for row in rows
    ]
    return torch.cat(
        [
            torch.cat([block.reshape(t.numel(), -1) for block in row], dim=1)
            for row, t in zip(rows, row_tensors if tuple_rows else (row_tensors,), strict=True)
        ],
        dim=0,
    )


def jacobian_array(row_tensors: Any, blocks: Any) -> torch.Tensor:
    """A Jacobian (or Hessian) as one array: itself when it is one tensor, else
    ``matrix``. A Hessian of a one-entry dict output (``{"loss": H}``) is ``H``'s."""
    while isinstance(blocks, Mapping) and len(blocks) == 1 and not isinstance(row_tensors, dict):
        blocks = next(iter(blocks.values()))
    if isinstance(blocks, torch.Tensor):
        return blocks
    return matrix(row_tensors, blocks)


def dense(sparse: torch.Tensor) -> torch.Tensor:
    """A sparse Jacobian as a dense matrix, if it is not too large to write so."""
    if sparse.shape.numel() > _DENSE_LIMIT:
        raise InputError(
            f"-o: the sparse Jacobian {list(sparse.shape)} is too large for a dense .npy; "
            "write .npz, .pt or .json (rows, cols, values, shape)"
        )
    return sparse.to_dense()
