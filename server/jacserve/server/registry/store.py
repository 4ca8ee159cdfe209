"""The frontend's archive store: checked, content-addressed files, never loaded here.

The store checks an upload's zip structure and contents (:func:`detect_format`) and
keeps it as ``<model id>.archive``; loading and the operator check happen in a worker.

>>> import io, tempfile, torch
>>> buffer = io.BytesIO()
>>> torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
>>> store = ArchiveStore(tempfile.mkdtemp(), max_archive_bytes=1 << 20)
>>> model_id, fmt, already_present = store.add(buffer.getvalue())
>>> fmt.value, already_present, store.ids() == [model_id]
('torchscript', False, True)
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import threading

from jacserve.server.errors import InvalidArgument, NotFound, ResourceExhausted
from jacserve.server.registry.archive import ArchiveFormat, detect_format

__all__ = ["ArchiveStore", "check_model_id"]

_MODEL_ID = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".archive"


def check_model_id(model_id: str) -> str:
    """Return ``model_id`` if it is well-formed.

    Raises:
        InvalidArgument: not 64 lowercase hex characters.

    >>> check_model_id("x")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    InvalidArgument: model_id must be the 64 lowercase hex characters ...
    """
    if not _MODEL_ID.fullmatch(model_id):
        raise InvalidArgument(
            f"model_id must be the 64 lowercase hex characters returned by UploadModel; "
            f"got {model_id[:80]!r}"
        )
    return model_id


class ArchiveStore:
    """Archives on disk by SHA-256, checked before they are kept. Thread-safe.

    Args:
        directory: where archives live; created if missing.
        max_archive_bytes: largest archive, compressed or uncompressed.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_archive_bytes: int) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_archive_bytes = max_archive_bytes
        self._lock = threading.Lock()

    def path(self, model_id: str) -> pathlib.Path:
        """Where the archive of ``model_id`` is (or would be) kept."""
        return self.directory / f"{check_model_id(model_id)}{SUFFIX}"

    def add(self, data: bytes, *, expected_id: str = "") -> tuple[str, ArchiveFormat, bool]:
        """Check and keep an archive; returns (model id, format, already present).

        Raises:
            InvalidArgument: not an acceptable archive, or ``expected_id`` mismatches.
            ResourceExhausted: above the size caps.
        """
        if len(data) > self.max_archive_bytes:
            raise ResourceExhausted(
                f"archive is {len(data)} bytes, above the server's limit of "
                f"{self.max_archive_bytes} (--max-archive-bytes)"
            )
        model_id = hashlib.sha256(data).hexdigest()
        if expected_id and expected_id != model_id:
            raise InvalidArgument(
                f"archive bytes hash to {model_id}, not the expected {expected_id[:80]}; "
                "the upload was corrupted or truncated, send it again"
            )
        fmt = detect_format(data, max_uncompressed_bytes=self.max_archive_bytes)
        path = self.path(model_id)
        with self._lock:
            if path.exists():
                return model_id, fmt, True
            partial = path.with_suffix(f".partial-{threading.get_ident()}")
            partial.write_bytes(data)
            partial.replace(path)
        return model_id, fmt, False

    def ids(self) -> list[str]:
        """Ids of the stored archives, sorted."""
        return sorted(p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"*{SUFFIX}"))

    def remove(self, model_id: str) -> None:
        """Delete a stored archive.

        Raises:
            InvalidArgument: malformed id. NotFound: no such archive.
        """
        try:
            self.path(model_id).unlink()
        except FileNotFoundError:
            raise NotFound(
                f"model {model_id} is not registered; upload it first (UploadModel / Client.upload)"
            ) from None
