"""The catalog of a shared store: descriptions and quarantine marks kept in the bucket.

Every replica's :class:`SharedCatalog` answers from the bucket what the file catalog
answers from its folder: a description (``infos/<id>``) written by the replica that
checked the archive, so the others need not load it to describe it; a quarantine mark
(``quarantine/<id>.reason``), so an archive that crashed a loader on one replica is
refused by all. A description is given only for an archive the bucket still holds
(asked at most every ``--model-store-ttl`` seconds) and of which this replica holds a
verified copy, fetched on the spot: workers then start from local files.

>>> from jacserve.server.registry.objects import INFOS
>>> INFOS
'infos/'
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from jacserve.server.errors import JacserveError
from jacserve.server.registry.catalog import ModelCatalog
from jacserve.server.registry.objects import ARCHIVES, INFOS, QUARANTINE, StoreUnavailable
from jacserve.v1 import jacobian_service_pb2 as pb

if TYPE_CHECKING:
    from jacserve.server.registry.shared_store import SharedArchiveStore

__all__ = ["SharedCatalog"]

_LOG = logging.getLogger("jacserve.server.registry")
_REASON, _KEPT = ".reason", ".archive"


class SharedCatalog(ModelCatalog):
    """A :class:`ModelCatalog` over a :class:`SharedArchiveStore`. Thread-safe.

    Args:
        store: the shared store (its folder holds the local copies and descriptions).
    """

    def __init__(self, store: SharedArchiveStore) -> None:
        super().__init__(store.directory)
        self._store = store
        self._bucket = store.bucket

    def get(self, model_id: str) -> pb.ModelInfo | None:
        """The description of an archive the store holds and this replica has a verified
        copy of (fetching it now if needed), else ``None``."""
        if not self._store.present(model_id):
            ModelCatalog.forget(self, model_id)  # deleted elsewhere: only our copy goes
            return None
        info = super().get(model_id) or self._remote_info(model_id)
        if info is None:
            return None
        try:
            self._store.fetch(model_id)
        except JacserveError as exc:  # damaged or unreachable: resolving it says why
            _LOG.warning("model %s has no usable copy: %s", model_id, exc)
            return None
        return info

    def _remote_info(self, model_id: str) -> pb.ModelInfo | None:
        data = self._bucket.get_bytes(INFOS + model_id)
        if data is None:
            return None
        try:
            info = pb.ModelInfo.FromString(data)
        except DecodeError:
            return None
        if info.model_id != model_id:
            return None
        ModelCatalog.put(self, model_id, info)
        return info

    def all(self) -> list[pb.ModelInfo]:
        """Every description in the bucket, sorted by model id."""
        infos = {m.model_id: m for m in super().all()}
        for entry in self._bucket.list(INFOS):
            model_id = entry.name.removeprefix(INFOS)
            if model_id not in infos:
                info = self._remote_info(model_id)
                if info is not None:
                    infos[model_id] = info
        return [infos[k] for k in sorted(infos)]

    def put(self, model_id: str, info: pb.ModelInfo) -> None:
        """Publish a checked archive and its description, then remember it here."""
        self._store.publish(model_id)
        self._bucket.put_bytes(INFOS + model_id, info.SerializeToString())
        super().put(model_id, info)

    def forget(self, model_id: str) -> None:
        """Drop a description, here and in the bucket (the archive was deleted)."""
        super().forget(model_id)
        self._bucket.delete(INFOS + model_id)

    def quarantine(self, model_id: str, reason: str, *, keep_archive: bool = True) -> None:
        """Mark ``model_id`` bad for every replica; with ``keep_archive`` its archive is
        moved to ``quarantine/`` in the bucket, else it stays where it is."""
        super().quarantine(model_id, reason, keep_archive=keep_archive)
        self._bucket.put_bytes(QUARANTINE + model_id + _REASON, reason[:4000].encode())
        if keep_archive and self._bucket.copy(ARCHIVES + model_id, QUARANTINE + model_id + _KEPT):
            self._bucket.delete(ARCHIVES + model_id)
        self._store.evict(model_id)

    def quarantined(self, model_id: str) -> str | None:
        """Why ``model_id`` is quarantined (on any replica), or ``None``; the local mark
        when the bucket cannot be reached."""
        try:
            data = self._bucket.get_bytes(QUARANTINE + model_id + _REASON, limit=4000)
        except StoreUnavailable:
            return super().quarantined(model_id)
        return None if data is None else data.decode(errors="replace")

    def release(self, model_id: str) -> None:
        """Forget a quarantine everywhere (its archive is deleted)."""
        super().release(model_id)
        for suffix in (_REASON, _KEPT):
            self._bucket.delete(QUARANTINE + model_id + suffix)
