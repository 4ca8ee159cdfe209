"""Moving between tuples of tensors and the flat float64 vectors and matrices that the
analysis code (spectra, sparsity, sensitivity, verification) works with.

>>> parts = (torch.ones(2), torch.zeros(1, 2))
>>> flat64(parts).tolist()
[1.0, 1.0, 0.0, 0.0]
>>> [t.shape for t in split_like(flat64(parts), parts)]
[torch.Size([2]), torch.Size([1, 2])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["blocks_matrix", "flat64", "flat64_rows", "split_like"]


def flat64(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened and concatenated, as one float64 vector on the CPU."""
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])


def flat64_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors sharing a leading dimension k as one float64 ``[k, total]`` matrix on the
    CPU (row r concatenates row r of each, flattened).

    >>> flat64_rows([torch.ones(3, 2), torch.zeros(3)]).shape
    torch.Size([3, 3])
    """
    return torch.cat([t.detach().double().cpu().reshape(t.shape[0], -1) for t in tensors], dim=1)


def split_like(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A ``[total]`` vector (or ``[k, total]`` rows) split per tensor of ``like`` and
    shaped, typed and placed like it (a leading k kept)."""
    lead = flat.shape[:-1]
    parts, offset = [], 0
    for t in like:
        part = flat[..., offset : offset + t.numel()].reshape((*lead, *t.shape))
        parts.append(part.to(device=t.device, dtype=t.dtype))
        offset += t.numel()
    return tuple(parts)


def blocks_matrix(
    blocks: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], width: int
) -> torch.Tensor:
    """Jacobian blocks ``[i][j]`` (row-major over ``outputs`` × ``width`` inputs) as one
    float64 ``[M, N]`` matrix on the CPU.

    >>> blocks_matrix([torch.ones(2, 3), torch.zeros(2)], [torch.zeros(2)], 2).shape
    torch.Size([2, 4])
    """
    rows = [
        torch.cat(
            [
                blocks[i * width + j].detach().double().cpu().reshape(output.numel(), -1)
                for j in range(width)
            ],
            dim=1,
        )
        for i, output in enumerate(outputs)
    ]
    return torch.cat(rows, dim=0)
