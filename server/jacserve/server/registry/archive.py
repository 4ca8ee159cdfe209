"""Recognizing an uploaded archive before anything in it is loaded.

Both TorchScript (``torch.jit.save``) and torch.export (``torch.export.save``) write zip
files with one top-level folder. A TorchScript archive has ``<root>/data.pkl`` and
``<root>/code/``; a torch.export archive has ``<root>/archive_format`` containing
``pt2``. Every check reads the archive through one canonical view of its central
directory (:class:`~jacserve.server.registry.zipview.ZipView`): sizes and entry counts are
capped before any entry is inflated, and names are looked up ignoring case, as torch's
reader does.

>>> detect_format(b"not a zip", max_uncompressed_bytes=1 << 20)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
InvalidArgument: archive is not a zip file ...
"""

from __future__ import annotations

import io
import re
import zipfile
from enum import Enum
from typing import BinaryIO

from jacserve.server.errors import InvalidArgument
from jacserve.server.registry.export_checks import check_export_archive
from jacserve.server.registry.zipview import MAX_ENTRIES, ZipView

__all__ = ["MAX_ENTRIES", "ArchiveFormat", "detect_format", "strip_sample_inputs"]


class ArchiveFormat(str, Enum):
    """Serialization format of a model archive."""

    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"


def detect_format(data: bytes | BinaryIO, *, max_uncompressed_bytes: int) -> ArchiveFormat:
    """Return the format of an archive, checking its zip structure, sizes and contents.

    Args:
        data: the archive's bytes, or a seekable binary file holding them (read from its
            start; its position is restored).
        max_uncompressed_bytes: cap on the sum of the entries' uncompressed sizes.

    Returns:
        :attr:`ArchiveFormat.TORCHSCRIPT` or :attr:`ArchiveFormat.TORCH_EXPORT`.

    Raises:
        InvalidArgument: not a zip, a zip structure readers could disagree on (see
            :mod:`~jacserve.server.registry.zipview`), neither format, or contents that
            would run code while loading.
        ResourceExhausted: too many entries or too large once uncompressed.

    >>> import io, torch
    >>> buffer = io.BytesIO()
    >>> torch.jit.save(torch.jit.script(torch.nn.Tanh()), buffer)
    >>> detect_format(buffer, max_uncompressed_bytes=1 << 24)
    <ArchiveFormat.TORCHSCRIPT: 'torchscript'>
    """
    with ZipView.open(data, max_uncompressed_bytes=max_uncompressed_bytes) as view:
        marker = view.find("archive_format")
        if marker is not None and view.read(marker).strip() == b"pt2":
            check_export_archive(view)
            return ArchiveFormat.TORCH_EXPORT
        if view.find("data.pkl") is not None:
            if any(name.lower().startswith("code/") for name in view.names()):
                _check_torchscript_archive(view)
                return ArchiveFormat.TORCHSCRIPT
            raise InvalidArgument(
                "archive looks like a torch.save checkpoint (data.pkl without code/), which holds "
                "weights but no program; upload torch.jit.save(torch.jit.script(model)) or "
                "torch.export.save(torch.export.export(model, example_inputs)) instead"
            )
    raise InvalidArgument(
        "archive is a zip file but neither a TorchScript archive (data.pkl and code/) nor a "
        "torch.export archive (archive_format = pt2)"
    )


# NOTE: [TorchScript code that runs on loading]
# torch.jit.load compiles every class it needs from <root>/code/ (looked up ignoring
# case, whatever the extension), then its own restricted unpickler rebuilds data.pkl and
# constants.pkl: it resolves globals only to tensors and TorchScript or registered C++
# classes, never to Python callables, so those pickles (and code/*.debug_pkl) are left to
# it. What it does run is the TorchScript __setstate__ of any module or class object it
# rebuilds, before the server could check the program's operators. So any entry under
# code/ that mentions the identifier __setstate__ at all (definition, comment or call)
# is refused.
_SETSTATE = re.compile(rb"__setstate__")


def _check_torchscript_archive(view: ZipView) -> None:
    """Refuse TorchScript code that runs while loading (see NOTE: [TorchScript code that
    runs on loading])."""
    for entry in view.entries():
        where = view.relative(entry)
        if where.lower().startswith("code/") and _SETSTATE.search(view.read(entry)):
            raise InvalidArgument(
                f"archive mentions __setstate__ (in {where}), which would run inside "
                "torch.jit.load; the server refuses code that runs on loading. Remove the "
                "custom __setstate__ (or __getstate__ pair) from the module and its classes "
                "and save the model again"
            )


def strip_sample_inputs(data: bytes) -> bytes:
    """A copy of a .pt2 archive whose ``sample_inputs`` entries are emptied.

    torch.export.load unpickles the sample inputs, retrying with ``weights_only=False``;
    the server never needs them, and an empty entry is one torch skips unread. Names are
    matched ignoring case, as torch's reader finds them.

    >>> import io, torch
    >>> buffer = io.BytesIO()
    >>> torch.export.save(torch.export.export(torch.nn.Tanh(), (torch.ones(2),)), buffer)
    >>> stripped = strip_sample_inputs(buffer.getvalue())
    >>> archive = zipfile.ZipFile(io.BytesIO(stripped))
    >>> [archive.read(n) for n in archive.namelist() if "sample_inputs" in n]
    [b'']
    """
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for entry in source.infolist():
            relative = entry.filename.split("/", 1)[-1].lower()
            empty = relative.startswith("data/sample_inputs/")
            target.writestr(entry, b"" if empty else source.read(entry))
    return out.getvalue()
