"""Layout: cutting derivative passes into Jacobian blocks, and moving between tuples of
tensors and the flat float64 vectors and matrices that the analysis code (spectra,
sparsity, sensitivity, verification) works with.

>>> parts = (torch.ones(2), torch.zeros(1, 2))
>>> flat64(parts).tolist()
[1.0, 1.0, 0.0, 0.0]
>>> [t.shape for t in split_like(flat64(parts), parts)]
[torch.Size([2]), torch.Size([1, 2])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jacserve.server.engine._function import Outputs
from jacserve.server.engine.planner import Mode

__all__ = [
    "blocks_from_passes",
    "blocks_matrix",
    "flat64",
    "flat64_rows",
    "split_like",
    "zero_blocks",
]


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


def blocks_from_passes(
    mode: Mode,
    results: tuple[torch.Tensor, ...],
    outputs: Outputs,
    diff: Outputs,
    batch: int | None,
) -> list[torch.Tensor]:
    """Cut per-pass results into blocks [i][j] of shape ([B], *out_i, *in_j), row-major."""
    lead = 1 if batch is not None else 0
    out_shapes = [o.shape[lead:] for o in outputs]
    in_shapes = [d.shape[lead:] for d in diff]
    blocks: list[torch.Tensor | None] = [None] * (len(outputs) * len(diff))
    if mode == "forward":
        for i, column in enumerate(results):
            offset = 0
            for j, in_shape in enumerate(in_shapes):
                size = in_shape.numel()
                part = column[offset : offset + size].movedim(0, -1)
                blocks[i * len(diff) + j] = part.reshape((*part.shape[:-1], *in_shape))
                offset += size
    else:
        offset = 0
        for i, out_shape in enumerate(out_shapes):
            size = out_shape.numel()
            for j, row in enumerate(results):
                part = row[offset : offset + size]
                if batch is not None:
                    part = part.movedim(0, 1)
                blocks[i * len(diff) + j] = part.reshape(
                    (*([batch] if batch is not None else []), *out_shape, *in_shapes[j])
                )
            offset += size
    return [b for b in blocks if b is not None]


def zero_blocks(outputs: Outputs, diff: Outputs, batch: int | None) -> list[torch.Tensor]:
    lead = 1 if batch is not None else 0
    prefix = [batch] if batch is not None else []
    return [
        torch.zeros((*prefix, *o.shape[lead:], *d.shape[lead:]), dtype=o.dtype, device=o.device)
        for o in outputs
        for d in diff
    ]
