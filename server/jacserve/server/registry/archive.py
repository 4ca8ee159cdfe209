"""Recognizing an uploaded archive before anything in it is loaded.

Both TorchScript (``torch.jit.save``) and torch.export (``torch.export.save``) write zip
files with one top-level folder. A TorchScript archive has ``<root>/data.pkl`` and
``<root>/code/``; a torch.export archive has ``<root>/archive_format`` containing
``pt2``. The zip's central directory is read first so that entry counts and the
uncompressed size are capped before any entry is inflated.

>>> detect_format(b"not a zip", max_uncompressed_bytes=1 << 20)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
InvalidArgument: archive is not a zip file ...
"""

from __future__ import annotations

import io
import zipfile
from enum import Enum

from jacserve.server.errors import InvalidArgument, ResourceExhausted

__all__ = ["MAX_ENTRIES", "ArchiveFormat", "detect_format"]

MAX_ENTRIES = 100_000
"""Most zip entries an archive may hold."""


class ArchiveFormat(str, Enum):
    """Serialization format of a model archive."""

    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"


def _describe_prefix(data: bytes) -> str:
    head = data[:8]
    return f"it starts with bytes {head.hex(' ')}" if head else "it is empty"


def detect_format(data: bytes, *, max_uncompressed_bytes: int) -> ArchiveFormat:
    """Return the format of an archive, checking its zip structure and sizes first.

    Args:
        data: the archive's bytes.
        max_uncompressed_bytes: cap on the sum of the entries' uncompressed sizes.

    Returns:
        :attr:`ArchiveFormat.TORCHSCRIPT` or :attr:`ArchiveFormat.TORCH_EXPORT`.

    Raises:
        InvalidArgument: not a zip, duplicate entries, or neither format.
        ResourceExhausted: too many entries or too large once uncompressed.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise InvalidArgument(
            f"archive is not a zip file ({_describe_prefix(data)}); upload a file written by "
            "torch.jit.save (TorchScript) or torch.export.save (.pt2)"
        ) from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise ResourceExhausted(
                f"archive has {len(entries)} zip entries; at most {MAX_ENTRIES} are accepted"
            )
        names = [e.filename for e in entries]
        if len(set(names)) != len(names):
            raise InvalidArgument("archive has duplicate zip entry names; re-save the model")
        uncompressed = sum(e.file_size for e in entries)
        if uncompressed > max_uncompressed_bytes:
            raise ResourceExhausted(
                f"archive would uncompress to {uncompressed} bytes, above the server's limit of "
                f"{max_uncompressed_bytes} (--max-archive-bytes)"
            )
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1:
            raise InvalidArgument(
                f"archive must have exactly one top-level folder; found {len(roots)}"
            )
        (root,) = roots
        present = set(names)
        marker = f"{root}/archive_format"
        if marker in present and archive.read(marker).strip() == b"pt2":
            return ArchiveFormat.TORCH_EXPORT
        if f"{root}/data.pkl" in present:
            if any(name.startswith(f"{root}/code/") for name in names):
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
