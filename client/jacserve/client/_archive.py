"""Turning what a user passes as a model into archive bytes.

Archive bytes and paths need nothing else; a torch model is serialized by
:mod:`jacserve.client._serialize`, which imports torch (see NOTE: [Torch is optional
here] in :mod:`jacserve.codec`).

>>> archive_bytes(b"PK...")
b'PK...'
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

from jacserve.codec import torch_loaded

__all__ = ["ModelSource", "archive_bytes"]

if TYPE_CHECKING:
    import torch

    ModelSource = Union[  # noqa: UP007
        str,
        os.PathLike,
        bytes,
        torch.jit.ScriptModule,
        torch.export.ExportedProgram,
        torch.nn.Module,
        Callable[..., Any],
    ]
else:  # torch is optional: the torch types above are also callables
    ModelSource = Union[str, os.PathLike, bytes, Callable[..., Any]]  # noqa: UP007


def archive_bytes(model: Any, example_inputs: Sequence[Any] | None = None) -> bytes:
    """Serialize a model into archive bytes.

    Args:
        model: a path, archive bytes, a ``ScriptModule``, an ``ExportedProgram``, or a
            plain ``nn.Module`` or Python function of tensors (then ``example_inputs`` is
            needed: it is exported with torch.export, else scripted, else traced). Its
            arguments and output may nest tensors in tuples, lists and string-keyed dicts.
            Only the torch models need torch.
        example_inputs: inputs to export or trace a module or function with, one per
            positional argument.

    Saving is deterministic, and a module or function is serialized once per content
    (:func:`~jacserve.client._fingerprint.fingerprint`: the code of all its submodules'
    classes, their attributes, parameters and buffers, the input signature), so the same
    model always gives the same model id and a changed one a new archive. The archive is
    loaded back and run on ``example_inputs`` before it is used, and again on every
    reuse: it must reproduce the model's output, or the model is serialized afresh.

    Raises:
        TypeError: for other types, or a module or function without ``example_inputs``.
        ValueError: a module or function that none of the three ways can serialize.
        FileNotFoundError: for a path that does not exist.

    >>> import torch
    >>> data = archive_bytes(torch.jit.script(torch.nn.Linear(2, 2)))
    >>> data[:2]
    b'PK'
    >>> archive_bytes(torch.sin, example_inputs=(torch.ones(2),))[:2]
    b'PK'
    """
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        return pathlib.Path(model).read_bytes()
    if not callable(model) and not torch_loaded():  # then it cannot be a torch model
        raise TypeError(
            f"upload: expected a path, bytes, torch.jit.ScriptModule, torch.export."
            f"ExportedProgram, nn.Module or function; got {type(model).__name__}"
        )
    from jacserve.client._serialize import serialize_model

    return serialize_model(model, example_inputs)
