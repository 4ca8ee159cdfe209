"""The archive store shared by replicas: an S3-compatible bucket plus a local LRU cache.

Objects under the store's prefix (all immutable but for deletion; model ids are the
archives' SHA-256, so no two replicas ever write different bytes under one name)::

    archives/<id>            the archive, published once a worker checked it
    infos/<id>               its serialized ModelInfo (no replica loads it to describe it)
    quarantine/<id>.reason   why it was quarantined (every replica refuses it)
    quarantine/<id>.archive  a quarantined archive kept for its operator
    corrupted/<id>           an object found not to hash to its id, set aside
    owners/<id>/<tenant>     a tenant's grant of the archive (see .ownership)
    tenants/<tenant>/<id>    the same grant, listed by tenant

An upload is staged, checked and kept in the local cache like in the file store; it is
published (``archives/<id>``, then ``infos/<id>``) when its worker has described it, so
other replicas never see an archive that did not pass. A replica that does not know an
id looks in the bucket; it fetches the archive into its cache and serves it only if the
bytes hash to the id (an object that does not is refused with reason
``ARCHIVE_CORRUPTED`` and set aside, so that the next lookup is NOT_FOUND and a new upload
repairs it). Presence is re-checked when a model is resolved, at most once per
``ttl_seconds`` (``--model-store-ttl``): a delete on one replica is seen by the others
within that time (at once with 0).

The flag's URL is read by :func:`~jacserve.server.registry.objects.parse_store_url`;
:func:`open_store` opens either kind of store.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import secrets
import threading
import time
from collections.abc import Mapping

from jacserve.server.errors import FailedPrecondition, Reason
from jacserve.server.registry.cache import ArchiveCache
from jacserve.server.registry.objects import ARCHIVES, Bucket, StoreUnavailable, parse_store_url
from jacserve.server.registry.ownership import Ownership
from jacserve.server.registry.shared_catalog import SharedCatalog
from jacserve.server.registry.store import ArchiveStore, StagedArchive, check_model_id

__all__ = ["ARCHIVE_CORRUPTED", "SharedArchiveStore", "open_store"]

_LOG = logging.getLogger("jacserve.server.registry")
ARCHIVE_CORRUPTED = Reason.ARCHIVE_CORRUPTED
CORRUPTED = "corrupted/"  # archives that did not hash to their id, set aside


class SharedArchiveStore(ArchiveStore):
    """An :class:`ArchiveStore` whose archives live in a bucket shared by replicas.

    Args:
        bucket: the object store.
        directory: the local cache and staging folder.
        max_archive_bytes, max_store_bytes, max_models: as for :class:`ArchiveStore`;
            the quotas count the whole bucket.
        cache_bytes: bound on the local copies (LRU).
        ttl_seconds: how long a confirmed presence is trusted before it is asked again.
    """

    def __init__(
        self,
        bucket: Bucket,
        directory: str | pathlib.Path,
        *,
        max_archive_bytes: int,
        max_store_bytes: int | None = None,
        max_models: int | None = None,
        cache_bytes: int,
        ttl_seconds: float,
    ) -> None:
        super().__init__(
            directory,
            max_archive_bytes=max_archive_bytes,
            max_store_bytes=max_store_bytes,
            max_models=max_models,
        )
        self.bucket = bucket
        self.cache = ArchiveCache(self.directory, max_bytes=cache_bytes)
        self.ttl_seconds = ttl_seconds
        self._confirmed: dict[str, float] = {}  # id -> when the bucket last held it
        self._pending: dict[str, int] = {}  # committed here, not yet published: sizes
        self._fetches: dict[str, threading.Lock] = {}
        self._damaged: dict[str, FailedPrecondition] = {}  # set aside, not yet reported
        self.fetch_seconds: list[float] = []  # durations of the last fetches (for benchmarks)

    # -- presence -----------------------------------------------------------------------

    def present(self, model_id: str) -> bool:
        """Whether the store holds ``model_id`` (asked at most every ``ttl_seconds``). A
        replica that cannot reach the bucket trusts the copies it holds."""
        with self._lock:
            if model_id in self._pending:
                return True
            seen = self._confirmed.get(model_id)
        if seen is not None and time.monotonic() - seen < self.ttl_seconds:
            return True
        try:
            held = self.bucket.exists(ARCHIVES + model_id)
        except StoreUnavailable:
            if self.cache.get(model_id) is None:
                raise
            _LOG.warning("model store unreachable; serving the local copy of %s", model_id)
            return True
        if held:
            with self._lock:
                self._confirmed[model_id] = time.monotonic()
        else:
            self.evict(model_id)
        return held

    def evict(self, model_id: str) -> None:
        """Forget this replica's copy of ``model_id`` (the bucket is not touched)."""
        with self._lock:
            self._confirmed.pop(model_id, None)
            self._pending.pop(model_id, None)
        self.cache.discard(model_id)

    def _holds(self, model_id: str) -> bool:
        return model_id in self._pending or self.bucket.exists(ARCHIVES + model_id)

    def holds(self, model_id: str) -> bool:
        """:meth:`present`."""
        return self.present(model_id)

    def ownership(self) -> Ownership:
        """The tenants' grants, in the bucket (re-read at most every ``ttl_seconds``)."""
        return Ownership(self.bucket, ttl_seconds=self.ttl_seconds)

    # -- local copies -------------------------------------------------------------------

    def path(self, model_id: str) -> pathlib.Path:
        """The local copy of ``model_id``, fetched and verified if needed; a path that
        does not exist when the store does not hold it.

        Raises:
            FailedPrecondition: the stored bytes do not hash to the id (reason
                ``ARCHIVE_CORRUPTED``); nothing is kept or loaded.
            StoreUnavailable: the bucket cannot be reached.
        """
        check_model_id(model_id)
        if not self.present(model_id):
            with self._lock:
                damaged = self._damaged.pop(model_id, None)
            if damaged is not None:  # refused a moment ago (by the catalog): say why once
                raise damaged
            return self.cache.path(model_id)
        return self.fetch(model_id)

    def worker_path(self, model_id: str) -> str:
        """:meth:`path` for the worker pool: never raises (a failure is logged and gives
        a path that does not exist, so the worker start reports NOT_FOUND)."""
        try:
            return str(self.path(model_id))
        except Exception as exc:
            _LOG.error("no local copy of model %s: %s", model_id, exc)
            return str(self.cache.path(model_id))

    def fetch(self, model_id: str) -> pathlib.Path:
        """A verified local copy of ``model_id``, downloaded if this replica has none
        (one download at a time per id)."""
        copy = self.cache.get(model_id)
        if copy is not None:
            return copy
        with self._lock:
            lock = self._fetches.setdefault(model_id, threading.Lock())
        with lock:
            copy = self.cache.get(model_id)
            if copy is not None:
                return copy
            started = time.perf_counter()
            staging = self._staging / f"{secrets.token_hex(16)}.fetch"
            try:
                if not self._download(model_id, staging):
                    self.evict(model_id)
                    return self.cache.path(model_id)
                copy = self.cache.add(model_id, staging)
            finally:
                staging.unlink(missing_ok=True)
            self.fetch_seconds = [*self.fetch_seconds[-99:], time.perf_counter() - started]
            _LOG.info("fetched model %s from the model store", model_id)
            return copy

    def _download(self, model_id: str, target: pathlib.Path) -> bool:
        opened = self.bucket.open(ARCHIVES + model_id)
        if opened is None:
            return False
        size, chunks = opened
        digest, received = hashlib.sha256(), 0
        with target.open("xb") as file:
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > self.max_archive_bytes:
                        break
                    digest.update(chunk)
                    file.write(chunk)
            except Exception as exc:
                raise StoreUnavailable(
                    f"the model store {self.bucket.url} broke off sending model {model_id}: {exc}"
                ) from exc
        if received > self.max_archive_bytes or digest.hexdigest() != model_id:
            actual = "over --max-archive-bytes" if received > self.max_archive_bytes else None
            self._set_aside(model_id)
            error = FailedPrecondition(
                f"model {model_id} is refused: its archive in the model store "
                f"({self.bucket.url}) does not hash to its id "
                f"({actual or 'sha256 ' + digest.hexdigest()}; {size} bytes), so it was "
                "altered or damaged there; it was not loaded. Upload the model again to "
                "repair it, or delete it",
                reason=ARCHIVE_CORRUPTED,
                model_id=model_id,
            )
            with self._lock:
                self._damaged[model_id] = error
            raise error
        return True

    def _set_aside(self, model_id: str) -> None:
        """Move an object that does not hash to its id to ``corrupted/`` for an operator
        to inspect: it can never become valid, and a new upload then replaces it."""
        _LOG.error("model %s: the stored archive does not hash to its id; set aside", model_id)
        try:
            if self.bucket.copy(ARCHIVES + model_id, CORRUPTED + model_id):
                self.bucket.delete(ARCHIVES + model_id)
        except StoreUnavailable as exc:
            _LOG.error("model %s: could not set the damaged archive aside: %s", model_id, exc)
        self.evict(model_id)

    # -- keeping and removing -----------------------------------------------------------

    def commit(self, staged: StagedArchive) -> None:
        """Keep a staged archive in the local cache; it is published to the bucket by
        :meth:`publish`, once checked."""
        with self._lock:
            self._reserved.pop(staged.path, None)
            self._pending[staged.model_id] = staged.size_bytes
            self._damaged.pop(staged.model_id, None)
        if self.cache.get(staged.model_id) is None:
            self.cache.add(staged.model_id, staged.path)
        else:
            staged.path.unlink(missing_ok=True)

    def publish(self, model_id: str) -> None:
        """Upload a checked archive committed here (every upload: this also repairs an
        object damaged in the bucket); nothing happens for one fetched from it."""
        with self._lock:
            if model_id not in self._pending:
                return
        with self.cache.path(model_id).open("rb") as file:
            self.bucket.put_file(ARCHIVES + model_id, file)
        with self._lock:
            self._pending.pop(model_id, None)
            self._confirmed[model_id] = time.monotonic()

    def read(self, model_id: str) -> bytes:
        """The bytes of a stored archive (fetched and verified if needed).

        Raises:
            NotFound: the store does not hold it.
        """
        try:
            return self.path(model_id).read_bytes()
        except FileNotFoundError:
            raise self._not_found(model_id) from None

    def ids(self) -> list[str]:
        """Ids of the archives in the bucket (and those committed here), sorted."""
        names = {e.name.removeprefix(ARCHIVES) for e in self.bucket.list(ARCHIVES)}
        with self._lock:
            names.update(self._pending)
        return sorted(n for n in names if _is_id(n))

    def remove(self, model_id: str) -> None:
        """Delete an archive from the bucket (for every replica) and the local cache.

        Raises:
            InvalidArgument: malformed id. NotFound: the store does not hold it.
        """
        check_model_id(model_id)
        with self._lock:
            pending = self._pending.pop(model_id, None) is not None
        held = self.bucket.exists(ARCHIVES + model_id)
        if held:
            self.bucket.delete(ARCHIVES + model_id)
        self.evict(model_id)
        if not (held or pending):
            raise self._not_found(model_id)

    def _usage(self) -> tuple[int, int]:
        entries = [e for e in self.bucket.list(ARCHIVES) if _is_id(e.name.removeprefix(ARCHIVES))]
        names = {e.name.removeprefix(ARCHIVES) for e in entries}
        extra = [size for name, size in self._pending.items() if name not in names]
        extra += list(self._reserved.values())
        return len(entries) + len(extra), sum(e.size for e in entries) + sum(extra)

    def catalog(self) -> SharedCatalog:
        """The catalog whose descriptions and quarantine marks live in the bucket too."""
        return SharedCatalog(self)


def _is_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def open_store(
    url: str | None,
    directory: str | pathlib.Path,
    *,
    max_archive_bytes: int,
    max_store_bytes: int | None = None,
    max_models: int | None = None,
    cache_bytes: int = 2 << 30,
    ttl_seconds: float = 2.0,
    environ: Mapping[str, str] | None = None,
) -> ArchiveStore:
    """The store ``--model-store`` names: ``None`` or ``file://`` give a file store in
    ``directory`` (or the URL's folder); ``s3://`` a shared store cached in ``directory``.

    >>> import tempfile
    >>> type(open_store(None, tempfile.mkdtemp(), max_archive_bytes=1 << 20)).__name__
    'ArchiveStore'
    """
    scheme, location = parse_store_url(url) if url else ("file", str(directory))
    if scheme == "file":
        return ArchiveStore(
            location,
            max_archive_bytes=max_archive_bytes,
            max_store_bytes=max_store_bytes,
            max_models=max_models,
        )
    return SharedArchiveStore(
        Bucket(location, environ),
        directory,
        max_archive_bytes=max_archive_bytes,
        max_store_bytes=max_store_bytes,
        max_models=max_models,
        cache_bytes=cache_bytes,
        ttl_seconds=ttl_seconds,
    )
