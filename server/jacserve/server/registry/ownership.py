"""Which tenant owns which stored archive.

Archives are content-addressed and stored once; ownership is a separate record per
(archive, tenant), kept beside the archives — files in the model directory, or objects in
the shared store's bucket, so every replica sees the same owners::

    owners/<model id>/<tenant>     the tenant owns the archive (empty)
    tenants/<tenant>/<model id>    the same grant, listed by tenant (body: archive bytes)

A tenant may use a model it owns, or one owned by ``*``
(:data:`~jacserve.server.tenants.PUBLIC`): an archive the operator placed in the store.
Deleting removes the caller's grant; the archive goes when no grant is left.

>>> import tempfile
>>> owners = Ownership(FolderObjects(tempfile.mkdtemp()))
>>> owners.grant("ab" * 32, "alice", 10)
>>> owners.may_use("ab" * 32, "alice"), owners.may_use("ab" * 32, "bob")
(True, False)
>>> owners.usage("alice"), owners.revoke("ab" * 32, "alice"), owners.owners("ab" * 32)
((1, 10), False, set())
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
import time
from typing import Protocol

from jacserve.server.registry.objects import ObjectEntry
from jacserve.server.tenants import PUBLIC

__all__ = ["FolderObjects", "Objects", "Ownership"]

OWNERS, TENANTS = "owners/", "tenants/"


class Objects(Protocol):
    """The few object-store operations ownership needs (a bucket or a folder)."""

    def put_bytes(self, name: str, data: bytes) -> None: ...
    def get_bytes(self, name: str, limit: int = 1 << 20) -> bytes | None: ...
    def delete(self, name: str) -> None: ...
    def list(self, folder: str) -> list[ObjectEntry]: ...


class FolderObjects:
    """:class:`Objects` as files under a folder (names are relative paths).

    >>> import tempfile
    >>> folder = FolderObjects(tempfile.mkdtemp())
    >>> folder.put_bytes("a/b", b"1"); folder.get_bytes("a/b"), [e.name for e in folder.list("a/")]
    (b'1', ['a/b'])
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = pathlib.Path(directory)

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` (atomically)."""
        path = self._directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{threading.get_ident()}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    def get_bytes(self, name: str, limit: int = 1 << 20) -> bytes | None:
        """The bytes of ``name`` (at most ``limit``), or ``None``."""
        try:
            with (self._directory / name).open("rb") as file:
                return file.read(limit)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete(self, name: str) -> None:
        """Remove ``name`` and its folder once empty (nothing happens if it is missing)."""
        path = self._directory / name
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty, or gone
            path.parent.rmdir()

    def list(self, folder: str) -> list[ObjectEntry]:
        """The files under ``folder`` (recursively), names relative to the root."""
        entries = []
        for here, _, files in os.walk(self._directory / folder):  # nothing when missing
            prefix = os.path.relpath(here, self._directory).replace(os.sep, "/")
            for name in files:
                if not name.startswith("."):
                    size = os.stat(os.path.join(here, name)).st_size
                    entries.append(ObjectEntry(f"{prefix}/{name}", size))
        return sorted(entries, key=lambda e: e.name)


class Ownership:
    """Grants of stored archives to tenants. Thread-safe.

    Args:
        objects: where the grants live (the model folder, or the shared bucket).
        ttl_seconds: how long an archive's owners are trusted before they are read again
            (0: always read; a shared store passes ``--model-store-ttl``).
    """

    def __init__(self, objects: Objects, *, ttl_seconds: float = 0.0) -> None:
        self._objects = objects
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, frozenset[str]]] = {}  # id -> (read at, owners)
        self._sizes: dict[str, int] = {}  # tenants/<tenant>/<id> -> the archive's bytes

    def owners(self, model_id: str, *, fresh: bool = False) -> set[str]:
        """The tenants (and ``*``) that own ``model_id``: read again when ``fresh`` or
        older than the TTL. "No owner" is never remembered: another replica may be
        granting the archive right now."""
        now = time.monotonic()
        with self._lock:
            cached = self._cached.get(model_id)
        if not fresh and cached is not None and now - cached[0] < self._ttl:
            return set(cached[1])
        names = {e.name.rsplit("/", 1)[-1] for e in self._objects.list(f"{OWNERS}{model_id}/")}
        with self._lock:
            if self._ttl and names:
                self._cached[model_id] = (now, frozenset(names))
            else:
                self._cached.pop(model_id, None)
        return names

    def may_use(self, model_id: str, tenant: str) -> bool:
        """Whether ``tenant`` owns ``model_id`` or the operator made it public."""
        owners = self.owners(model_id)
        return tenant in owners or PUBLIC in owners

    def grant(self, model_id: str, tenant: str, size_bytes: int) -> None:
        """Record that ``tenant`` owns ``model_id`` (an archive of ``size_bytes``)."""
        self._objects.put_bytes(f"{TENANTS}{tenant}/{model_id}", str(size_bytes).encode())
        self._objects.put_bytes(f"{OWNERS}{model_id}/{tenant}", b"")
        self._forget(model_id)

    def revoke(self, model_id: str, tenant: str) -> bool:
        """Remove ``tenant``'s grant; returns whether anyone still owns the archive."""
        self._objects.delete(f"{OWNERS}{model_id}/{tenant}")
        self._objects.delete(f"{TENANTS}{tenant}/{model_id}")
        self._forget(model_id)
        return bool(self.owners(model_id, fresh=True))

    def everyone(self) -> dict[str, set[str]]:
        """Every archive that has owners, with its owners (one listing)."""
        owners: dict[str, set[str]] = {}
        for entry in self._objects.list(OWNERS):
            _, model_id, tenant = entry.name.split("/", 2)
            owners.setdefault(model_id, set()).add(tenant)
        return owners

    def usage(self, tenant: str) -> tuple[int, int]:
        """(archives, bytes) ``tenant`` owns, each archive counted in full."""
        models = total = 0
        for entry in self._objects.list(f"{TENANTS}{tenant}/"):
            if entry.name not in self._sizes:  # a grant's size never changes: read it once
                body = self._objects.get_bytes(entry.name, limit=32) or b"0"
                self._sizes[entry.name] = int(body) if body.isdigit() else 0
            models += 1
            total += self._sizes[entry.name]
        return models, total

    def _forget(self, model_id: str) -> None:
        with self._lock:
            self._cached.pop(model_id, None)
