"""Who may see, use and delete each stored model, and each tenant's quota.

Uploads are granted to their tenant before the archive is stored, and a delete removes
the archive before the last grant, so a stored archive without any grant was put there
by the operator (or stored before tenants were configured): it is *adopted* as public
(owner ``*``), usable by every tenant and deletable by the ``default`` tenant only.
Another tenant's model is NOT_FOUND, exactly like an unknown id, so existence is never
revealed.

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

from collections.abc import Iterable

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


class ModelAccess:
    """Ownership checks over a store. Thread-safe.

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

    def _owners_of(self, model_id: str) -> set[str]:
        owners = self._owners.owners(model_id)
        if not owners and (
            self._store.holds(model_id) or self._catalog.quarantined(model_id) is not None
        ):
            self._owners.grant(model_id, PUBLIC, 0)  # the operator's: see the module's note
            owners = {PUBLIC}
        return owners

    def may_use(self, model_id: str, tenant: str) -> bool:
        """Whether ``tenant`` owns ``model_id``, or the operator placed it."""
        owners = self._owners_of(model_id)
        return tenant in owners or PUBLIC in owners

    def visible(self, tenant: str, stored: Iterable[str]) -> set[str]:
        """The ids among ``stored`` that ``tenant`` may see (one listing of the grants)."""
        everyone = self._owners.everyone()
        return {
            m for m in stored if m not in everyone or tenant in everyone[m] or PUBLIC in everyone[m]
        }

    def claim(self, model_id: str, tenant: str, size_bytes: int) -> bool:
        """Grant an uploaded archive to ``tenant``; returns whether it owned it already.

        Raises:
            ResourceExhausted: a new grant would take the tenant past its quota (reason
                ``QUOTA_EXCEEDED``).
        """
        if tenant in self._owners.owners(model_id):
            return True
        if self._max_models is not None or self._max_bytes is not None:
            self._check_quota(tenant, size_bytes)
        self._owners.grant(model_id, tenant, size_bytes)
        return False

    def release(self, model_id: str, tenant: str) -> bool:
        """Remove ``tenant``'s grant; returns whether anyone still owns the archive."""
        return self._owners.revoke(model_id, tenant)

    def deletion(self, model_id: str, tenant: str) -> tuple[str, bool]:
        """What ``tenant`` deleting ``model_id`` removes: (the grant, whether the archive
        goes too because nobody else owns it).

        Raises:
            NotFound: not a model ``tenant`` may see.
            PermissionDenied: a public model, and ``tenant`` is not ``default``.
        """
        owners = self._owners_of(model_id)
        if tenant in owners:
            grant = tenant
        elif PUBLIC in owners and tenant == DEFAULT_TENANT:
            grant = PUBLIC
        elif PUBLIC in owners:
            raise PermissionDenied(
                f"model {model_id} was placed in the store by the operator and is shared by "
                "every tenant; only the operator (tenant 'default') can delete it",
                model_id=model_id,
            )
        else:
            raise not_registered(model_id)
        return grant, owners == {grant}

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
