"""Turning what a user passes as a model into archive bytes."""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any, Union

import torch

__all__ = ["ModelSource", "archive_bytes"]

ModelSource = Union[str, os.PathLike, bytes, torch.jit.ScriptModule, torch.export.ExportedProgram]  # noqa: UP007


def archive_bytes(model: Any) -> bytes:
    """Serialize a path, bytes, ScriptModule or ExportedProgram into archive bytes.

    Saving is deterministic, so the same module always gives the same model id.

    Raises:
        TypeError: for other types (plain ``nn.Module`` s must be scripted or exported first).
        FileNotFoundError: for a path that does not exist.

    >>> data = archive_bytes(torch.jit.script(torch.nn.Linear(2, 2)))
    >>> data[:2]
    b'PK'
    """
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        return pathlib.Path(model).read_bytes()
    buffer = io.BytesIO()
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, buffer)
    elif isinstance(model, torch.export.ExportedProgram):
        torch.export.save(model, buffer)
    else:
        raise TypeError(
            f"upload: expected a path, bytes, torch.jit.ScriptModule or "
            f"torch.export.ExportedProgram; got {type(model).__name__}. Convert an nn.Module "
            "with torch.export.export(module, example_inputs) or torch.jit.script(module)"
        )
    return buffer.getvalue()
