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
import json
import re
import zipfile
from enum import Enum

from jacserve.server.errors import InvalidArgument, ResourceExhausted

__all__ = ["MAX_ENTRIES", "ArchiveFormat", "detect_format", "strip_sample_inputs"]

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
            _check_export_archive(archive, root)
            return ArchiveFormat.TORCH_EXPORT
        if f"{root}/data.pkl" in present:
            if any(name.startswith(f"{root}/code/") for name in names):
                _check_torchscript_archive(archive, root)
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


_SETSTATE = re.compile(rb"\bdef\s+__setstate__\s*\(")
_PICKLED_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")


def _check_torchscript_archive(archive: zipfile.ZipFile, root: str) -> None:
    """Refuse TorchScript code that runs while loading: ``__setstate__`` is called by
    ``torch.jit.load`` itself, before the server could look at the program's operators."""
    for entry in archive.infolist():
        name = entry.filename
        is_code = name.startswith(f"{root}/code/") and name.endswith(".py")
        if is_code and _SETSTATE.search(archive.read(entry)):
            where = entry.filename.removeprefix(f"{root}/code/")
            raise InvalidArgument(
                f"archive defines __setstate__ (in code/{where}), which would run inside "
                "torch.jit.load; the server refuses code that runs on loading. Remove the "
                "custom __setstate__ (or __getstate__ pair) and save the model again"
            )


def _check_export_archive(archive: zipfile.ZipFile, root: str) -> None:
    """Refuse the parts of a .pt2 archive that torch.export.load hands to pickle or to
    native code: AOTInductor binaries and weights, constants or objects stored as pickles."""
    for name in archive.namelist():
        relative = name.removeprefix(f"{root}/")
        if "aotinductor/" in relative:
            raise InvalidArgument(
                f"archive contains an AOTInductor package ({relative}), which torch would "
                "load as native code; upload the torch.export program without "
                "aoti_compile_and_package"
            )
        folder, _, filename = relative.rpartition("/")
        if folder == "data/constants" and filename.startswith(_PICKLED_OBJECT_PREFIXES):
            raise InvalidArgument(
                f"archive stores a Python or script object as a pickle ({relative}); the "
                "server unpickles nothing from an upload. Keep only tensors in the program's "
                "constants"
            )
        if folder in ("data/weights", "data/constants") and filename.endswith("_config.json"):
            _check_payload_config(archive.read(name), relative)


def _check_payload_config(raw: bytes, where: str) -> None:
    try:
        config = json.loads(raw).get("config", {})
        entries = [(str(k), dict(v)) for k, v in config.items()]
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(
            f"archive entry {where} is not the JSON torch.export writes"
        ) from None
    for fqn, entry in entries:
        path = str(entry.get("path_name", ""))
        if entry.get("use_pickle", False) or path.startswith(_PICKLED_OBJECT_PREFIXES):
            raise InvalidArgument(
                f"archive stores {fqn!r} as a pickle ({where}); the server unpickles nothing "
                "from an upload. Save tensors as plain dense tensors (for example call "
                ".contiguous() on subclassed or non-standard tensors before exporting)"
            )


def strip_sample_inputs(data: bytes) -> bytes:
    """A copy of a .pt2 archive whose ``sample_inputs`` entries are emptied.

    torch.export.load unpickles the sample inputs, retrying with ``weights_only=False``;
    the server never needs them, and an empty entry is one torch skips unread.

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
            empty = "/data/sample_inputs/" in entry.filename
            target.writestr(entry, b"" if empty else source.read(entry))
    return out.getvalue()
