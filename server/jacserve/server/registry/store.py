"""The frontend's archive store: checked, content-addressed files, never loaded here.

An upload is streamed to a staging file (hashed and size-capped as it arrives, never
held whole in memory), checked (:func:`detect_format`) and counted against the store's
quota (:meth:`ArchiveStore.receive`); :meth:`ArchiveStore.commit` then keeps it as
``<model id>.archive``. Loading and the operator check happen in a worker.

>>> import io, tempfile, torch
>>> buffer = io.BytesIO()
>>> torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buffer)
>>> store = ArchiveStore(tempfile.mkdtemp(), max_archive_bytes=1 << 20)
>>> staged = store.receive([buffer.getvalue()[:100], buffer.getvalue()[100:]])
>>> staged.format.value, staged.already_present, store.ids()
('torchscript', False, [])
>>> store.commit(staged)
>>> store.ids() == [staged.model_id], store.read(staged.model_id) == buffer.getvalue()
(True, True)
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import secrets
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from jacserve.server.errors import InvalidArgument, NotFound, Reason, ResourceExhausted
from jacserve.server.registry.archive import ArchiveFormat, detect_format
from jacserve.server.registry.catalog import ModelCatalog
from jacserve.server.registry.ownership import FolderObjects, Ownership

__all__ = ["ArchiveStore", "StagedArchive", "check_model_id"]

_MODEL_ID = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".archive"
STAGING = ".staging"
_FREE_SPACE_HINT = (
    "delete models you no longer need (DeleteModel, or `jacserve models delete MODEL_ID`)"
)


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
            f"got {model_id[:80]!r}",
            reason=Reason.INVALID_MODEL_ID,
        )
    return model_id


@dataclass(frozen=True)
class StagedArchive:
    """A received, checked archive waiting in the staging folder for commit or discard.

    ``already_present``: the store held the same bytes when it was received (it then
    takes no quota).
    """

    model_id: str
    format: ArchiveFormat
    path: pathlib.Path
    size_bytes: int
    already_present: bool


class ArchiveStore:
    """Archives on disk by SHA-256, checked before they are kept. Thread-safe.

    Opening a store removes the staging files a crashed server left behind.

    Args:
        directory: where archives live; created if missing.
        max_archive_bytes: largest archive, compressed or uncompressed.
        max_store_bytes: most bytes all kept archives may take (None: no cap).
        max_models: most archives kept (None: no cap).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_archive_bytes: int,
        max_store_bytes: int | None = None,
        max_models: int | None = None,
    ) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_archive_bytes = max_archive_bytes
        self.max_store_bytes = max_store_bytes
        self.max_models = max_models
        self._staging = self.directory / STAGING
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.mkdir()
        for leftover in self.directory.glob("*.partial-*"):  # older servers' temporary files
            leftover.unlink(missing_ok=True)
        self._reserved: dict[pathlib.Path, int] = {}  # staged, not yet committed: their sizes
        self._lock = threading.Lock()

    def path(self, model_id: str) -> pathlib.Path:
        """Where the archive of ``model_id`` is (or would be) kept."""
        return self.directory / f"{check_model_id(model_id)}{SUFFIX}"

    def receive(self, chunks: Iterable[bytes], *, expected_id: str = "") -> StagedArchive:
        """Stream an archive into the staging folder, check it and reserve its quota.

        The chunks go to disk as they come (hashed on the way); whatever goes wrong,
        including an exception raised by ``chunks`` itself, removes the staging file.
        Pass the result to :meth:`commit` or :meth:`discard`.

        Raises:
            InvalidArgument: not an acceptable archive, or ``expected_id`` mismatches.
            ResourceExhausted: above --max-archive-bytes, --max-store-bytes or --max-models.
        """
        path = self._staging / f"{secrets.token_hex(16)}.partial"
        try:
            with path.open("x+b") as file:
                digest, size = hashlib.sha256(), 0
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_archive_bytes:
                        raise ResourceExhausted(
                            f"archive is larger than the server's limit of "
                            f"{self.max_archive_bytes} bytes (--max-archive-bytes); upload a "
                            "smaller model or raise the limit"
                        )
                    digest.update(chunk)
                    file.write(chunk)
                model_id = digest.hexdigest()
                if expected_id and expected_id != model_id:
                    raise InvalidArgument(
                        f"archive bytes hash to {model_id}, not the expected "
                        f"{expected_id[:80]}; the upload was corrupted or truncated, send it again"
                    )
                file.flush()
                file.seek(0)
                fmt = detect_format(file, max_uncompressed_bytes=self.max_archive_bytes)
            with self._lock:
                already = self._holds(model_id)
                if not already:
                    self._check_quota(size)
                    self._reserved[path] = size
            return StagedArchive(model_id, fmt, path, size, already)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def commit(self, staged: StagedArchive) -> None:
        """Keep a staged archive as ``<model id>.archive`` (atomically); if the store
        holds it already, just drop the staging file."""
        target = self.path(staged.model_id)
        with self._lock:
            self._reserved.pop(staged.path, None)
            if target.exists():
                staged.path.unlink(missing_ok=True)
            else:
                staged.path.replace(target)

    def _holds(self, model_id: str) -> bool:
        """Whether the store keeps ``model_id`` already (caller holds the lock)."""
        return self.path(model_id).exists()

    def holds(self, model_id: str) -> bool:
        """Whether the store keeps ``model_id``."""
        return self.path(model_id).exists()

    def ownership(self) -> Ownership:
        """The tenants' grants of this store's archives (files beside them)."""
        return Ownership(FolderObjects(self.directory))

    def worker_path(self, model_id: str) -> str:
        """Where a worker reads the archive of ``model_id`` (for the worker pool)."""
        return str(self.path(model_id))

    def catalog(self) -> ModelCatalog:
        """The catalog (descriptions, quarantine) that goes with this store."""
        return ModelCatalog(self.directory)

    def discard(self, staged: StagedArchive) -> None:
        """Drop a staged archive and its reservation (nothing happens once committed)."""
        with self._lock:
            self._reserved.pop(staged.path, None)
            staged.path.unlink(missing_ok=True)

    def add(self, data: bytes, *, expected_id: str = "") -> tuple[str, ArchiveFormat, bool]:
        """Check and keep an archive held in memory; returns (model id, format, already present).

        Raises:
            InvalidArgument: not an acceptable archive, or ``expected_id`` mismatches.
            ResourceExhausted: above the size caps or the store's quota.
        """
        staged = self.receive([data], expected_id=expected_id)
        self.commit(staged)
        return staged.model_id, staged.format, staged.already_present

    def read(self, model_id: str) -> bytes:
        """The bytes of a kept archive.

        Raises:
            InvalidArgument: malformed id. NotFound: no such archive.
        """
        try:
            return self.path(model_id).read_bytes()
        except FileNotFoundError:
            raise self._not_found(model_id) from None

    def ids(self) -> list[str]:
        """Ids of the kept archives (not the staged ones), sorted."""
        return sorted(p.name.removesuffix(SUFFIX) for p in self.directory.glob(f"*{SUFFIX}"))

    def remove(self, model_id: str) -> None:
        """Delete a stored archive.

        Raises:
            InvalidArgument: malformed id. NotFound: no such archive.
        """
        try:
            self.path(model_id).unlink()
        except FileNotFoundError:
            raise self._not_found(model_id) from None

    def usage(self) -> tuple[int, int]:
        """(archives, bytes) kept, counting staged archives that will take quota.

        >>> import tempfile
        >>> ArchiveStore(tempfile.mkdtemp(), max_archive_bytes=1).usage()
        (0, 0)
        """
        with self._lock:
            return self._usage()

    def _usage(self) -> tuple[int, int]:
        sizes = [e.stat().st_size for e in os.scandir(self.directory) if e.name.endswith(SUFFIX)]
        return len(sizes) + len(self._reserved), sum(sizes) + sum(self._reserved.values())

    def _check_quota(self, size: int) -> None:
        """Refuse a new archive of ``size`` bytes that would take the store over its quota."""
        models, used = self._usage()
        if self.max_models is not None and models + 1 > self.max_models:
            raise ResourceExhausted(
                f"the model store is full: it holds {models} models ({used} bytes) and "
                f"--max-models is {self.max_models}; {_FREE_SPACE_HINT}, or ask the "
                "operator to raise --max-models"
            )
        if self.max_store_bytes is not None and used + size > self.max_store_bytes:
            raise ResourceExhausted(
                f"the model store is full: this {size}-byte archive would take it from "
                f"{used} bytes ({models} models) past its limit of {self.max_store_bytes} "
                f"bytes (--max-store-bytes); {_FREE_SPACE_HINT}, or ask the operator to "
                "raise --max-store-bytes"
            )

    @staticmethod
    def _not_found(model_id: str) -> NotFound:
        return NotFound(
            f"model {model_id} is not registered; upload it first (UploadModel / Client.upload)"
        )
