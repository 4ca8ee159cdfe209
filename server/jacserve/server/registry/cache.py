"""A replica's local copies of shared archives: one folder, bounded by bytes, LRU.

Files are ``<model id>.archive``; :meth:`ArchiveCache.add` moves a verified file in and
evicts the least recently used others until the total fits ``max_bytes`` (the file just
added is never evicted by its own addition, even if it alone is larger). Files found at
start (a persistent folder) are adopted, oldest use first.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> cache = ArchiveCache(folder, max_bytes=10)
>>> for name in ("a", "b"):
...     _ = (folder / name).write_bytes(b"123456")
...     _ = cache.add(name * 64, folder / name)
>>> cache.get("a" * 64) is None, cache.get("b" * 64) is not None, cache.size_bytes
(True, True, 6)
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections import OrderedDict

__all__ = ["ArchiveCache"]

_SUFFIX = ".archive"


class ArchiveCache:
    """Local archive files by model id, at most ``max_bytes`` in all. Thread-safe.

    Args:
        directory: the folder (created if missing).
        max_bytes: bound on the files' total size.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        found = sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_atime)
        for path in found:
            self._sizes[path.name.removesuffix(_SUFFIX)] = path.stat().st_size
        with self._lock:
            self._evict(keep="")

    def path(self, model_id: str) -> pathlib.Path:
        """Where the copy of ``model_id`` is (or would be)."""
        return self.directory / f"{model_id}{_SUFFIX}"

    def get(self, model_id: str) -> pathlib.Path | None:
        """The copy of ``model_id`` (now the most recently used), or ``None``."""
        with self._lock:
            if model_id not in self._sizes:
                return None
            self._sizes.move_to_end(model_id)
            return self.path(model_id)

    def add(self, model_id: str, source: pathlib.Path) -> pathlib.Path:
        """Move ``source`` (a verified file on the same file system) in as ``model_id``'s
        copy, then evict others down to the bound; returns the copy's path."""
        target = self.path(model_id)
        size = source.stat().st_size
        with self._lock:
            source.replace(target)
            self._sizes[model_id] = size
            self._sizes.move_to_end(model_id)
            self._evict(keep=model_id)
        return target

    def discard(self, model_id: str) -> None:
        """Drop the copy of ``model_id``, if any."""
        with self._lock:
            self._sizes.pop(model_id, None)
            self.path(model_id).unlink(missing_ok=True)

    @property
    def size_bytes(self) -> int:
        """Total size of the copies held."""
        with self._lock:
            return sum(self._sizes.values())

    def ids(self) -> list[str]:
        """Ids of the copies held, least recently used first."""
        with self._lock:
            return list(self._sizes)

    def _evict(self, *, keep: str) -> None:
        total = sum(self._sizes.values())
        for model_id in list(self._sizes):
            if total <= self.max_bytes:
                return
            if model_id == keep:
                continue
            total -= self._sizes.pop(model_id)
            self.path(model_id).unlink(missing_ok=True)
