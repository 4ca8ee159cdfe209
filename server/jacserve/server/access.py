"""Who may see, use and delete each stored model, and each tenant's quota.

NOTE: [Who owns an archive]
Archives are stored once; each tenant's claim to one is a grant
(:mod:`~jacserve.server.registry.ownership`). A tenant may use an archive it was granted,
or one granted to ``*`` (:data:`~jacserve.server.tenants.PUBLIC`): at start-up, the
archives the operator put in the model folder with no grant at all are granted to ``*``
(:meth:`ModelAccess.share_ungranted`). An archive found later with no grant (stored
before tenants were configured in a shared bucket, or left by an interrupted upload or
delete) belongs to tenant ``default`` only: nothing ever becomes public by inference.
Uploads are granted before the archive is stored; a delete revokes the caller's grant
first and removes the archive only if no grant is left, both under a per-archive lock
(and a per-tenant lock around a quota check and its grant), so racing uploads and deletes
on one server can neither lose a tenant's model nor expose it. Across replicas of a
shared store the same order keeps exposure impossible; a delete racing another
replica's upload of the same bytes can still remove them (that upload's next use is
NOT_FOUND, and the SDK uploads again).
Another tenant's model is NOT_FOUND, exactly like an unknown id.

>>> import tempfile
>>> from jacserve.server.registry.store import ArchiveStore
>>> store = ArchiveStore(tempfile.mkdtemp(), max_archive_bytes=1 << 20)
>>> access = ModelAccess(store, store.catalog(), max_models=1)
>>> access.claim("ab" * 32, "alice", 10), access.may_use("ab" * 32, "bob")
(False, False)
>>> access.claim("cd" * 32, "alice", 10)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
ResourceExhausted: tenant 'alice' owns 1 models ...
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from jacserve.server.errors import NotFound, PermissionDenied, Reason, ResourceExhausted
from jacserve.server.registry.catalog import ModelCatalog
from jacserve.server.registry.store import ArchiveStore
from jacserve.server.tenants import DEFAULT_TENANT, PUBLIC

__all__ = ["ModelAccess", "not_registered"]

_FREE = "delete models it no longer needs (DeleteModel / `jacserve models delete`)"


def not_registered(model_id: str) -> NotFound:
    """The one answer for an unknown id and for another tenant's model."""
    return NotFound(
        f"model {model_id} is not registered; upload it first (UploadModel / Client.upload)",
        model_id=model_id,
    )


class _Locks:
    """One lock per key, created on demand and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class ModelAccess:
    """Ownership checks over a store (see NOTE: [Who owns an archive]). Thread-safe.

    Args:
        store: the archive store (its :meth:`~ArchiveStore.ownership` keeps the grants).
        catalog: the store's catalog (quarantine marks).
        max_models: most models one tenant may own (None: no cap).
        max_bytes: most archive bytes one tenant may own, each archive counted in full
            even when another tenant owns it too (None: no cap).
    """

    def __init__(
        self,
        store: ArchiveStore,
        catalog: ModelCatalog,
        *,
        max_models: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._owners = store.ownership()
        self._max_models = max_models
        self._max_bytes = max_bytes
        self._archive_locks = _Locks()
        self._tenant_locks = _Locks()

    def locked(self, model_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold ``model_id``'s lock: uploads (claim, store, describe) and deletes (revoke,
        remove) of one archive run one at a time."""
        return self._archive_locks.hold(model_id)

    def share_ungranted(self, stored: Iterable[str]) -> list[str]:
        """Grant every stored archive without any grant to ``*`` (at start-up: the
        archives the operator placed); returns their ids."""
        granted = self._owners.everyone()
        shared = [m for m in stored if m not in granted]
        for model_id in shared:
            self._owners.grant(model_id, PUBLIC, 0)
        return shared

    def _owners_of(self, model_id: str, *, fresh: bool = False) -> set[str]:
        return self._implied(model_id, self._owners.owners(model_id, fresh=fresh))

    def _implied(self, model_id: str, granted: set[str]) -> set[str]:
        """The owners ``granted``, or ``default`` for a stored archive with no grant (the
        operator's: see the NOTE)."""
        if not granted and (
            self._store.holds(model_id) or self._catalog.quarantined(model_id) is not None
        ):
            return {DEFAULT_TENANT}
        return granted

    def may_use(self, model_id: str, tenant: str) -> bool:
        """Whether ``tenant`` owns ``model_id``, or every tenant may use it."""
        owners = self._owners_of(model_id)
        return tenant in owners or PUBLIC in owners

    def visible(self, tenant: str, stored: Iterable[str]) -> set[str]:
        """The ids among ``stored`` that ``tenant`` may see (one listing of the grants)."""
        everyone = self._owners.everyone()

        def sees(model_id: str) -> bool:
            owners = everyone.get(model_id) or {DEFAULT_TENANT}
            return tenant in owners or PUBLIC in owners

        return {m for m in stored if sees(m)}

    def claim(self, model_id: str, tenant: str, size_bytes: int) -> bool:
        """Grant an uploaded archive to ``tenant`` (call under :meth:`locked`); returns
        whether it owned it already.

        Raises:
            ResourceExhausted: a new grant would take the tenant past its quota (reason
                ``QUOTA_EXCEEDED``).
        """
        granted = self._owners.owners(model_id, fresh=True)
        owners = self._implied(model_id, granted)
        if tenant in owners:
            return True
        if owners and not granted:
            self._owners.grant(model_id, DEFAULT_TENANT, size_bytes)  # keep the operator's
        with self._tenant_locks.hold(tenant):
            if self._max_models is not None or self._max_bytes is not None:
                self._check_quota(tenant, size_bytes)
            self._owners.grant(model_id, tenant, size_bytes)
        return False

    def release(self, model_id: str, grant: str) -> bool:
        """Remove a grant (call under :meth:`locked`); returns whether any grant is left
        (read afresh)."""
        return self._owners.revoke(model_id, grant)

    def deletion(self, model_id: str, tenant: str) -> str:
        """The grant ``tenant`` deleting ``model_id`` removes (call under :meth:`locked`).

        Raises:
            NotFound: not a model ``tenant`` may see.
            PermissionDenied: a model every tenant may use, and ``tenant`` is not
                ``default``.
        """
        owners = self._owners_of(model_id, fresh=True)
        if tenant in owners:
            return tenant
        if PUBLIC in owners and tenant == DEFAULT_TENANT:
            return PUBLIC
        if PUBLIC in owners:
            raise PermissionDenied(
                f"model {model_id} was placed in the store by the operator and is shared by "
                "every tenant; only the operator (tenant 'default') can delete it",
                model_id=model_id,
            )
        raise not_registered(model_id)

    def _check_quota(self, tenant: str, size_bytes: int) -> None:
        models, used = self._owners.usage(tenant)
        if self._max_models is not None and models + 1 > self._max_models:
            raise ResourceExhausted(
                f"tenant {tenant!r} owns {models} models, its quota (--tenant-max-models "
                f"{self._max_models}); {_FREE}, or ask the operator to raise the quota",
                reason=Reason.QUOTA_EXCEEDED,
                tenant=tenant,
                quota="models",
            )
        if self._max_bytes is not None and used + size_bytes > self._max_bytes:
            raise ResourceExhausted(
                f"this {size_bytes}-byte archive would take tenant {tenant!r} from {used} "
                f"bytes past its quota of {self._max_bytes} (--tenant-max-bytes); {_FREE}, "
                "or ask the operator to raise the quota",
                reason=Reason.QUOTA_EXCEEDED,
                tenant=tenant,
                quota="bytes",
            )
