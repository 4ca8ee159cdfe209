"""Which workers a request may use: those of its archive *and* its tenant.

A worker is assumed compromised once it has loaded its archive, so two tenants who
upload the same bytes never share one: a worker that saw one tenant's inputs can never
answer another tenant (nor build the compiled programs another tenant's workers run).
The pool routes by this key; the worker itself is told only the archive's id.

>>> key = worker_key("ab" * 32, "team-a")
>>> key.endswith("@team-a"), model_of(key) == "ab" * 32, worker_key("ab" * 32) == "ab" * 32
(True, True, True)
>>> belongs(key, "ab" * 32, every_tenant=True), belongs(key, "ab" * 32)
(True, False)
"""

from __future__ import annotations

from jacserve.server.tenants import DEFAULT_TENANT

__all__ = ["belongs", "model_of", "worker_key"]


def worker_key(model_id: str, tenant: str = DEFAULT_TENANT) -> str:
    """The routing key of ``tenant``'s workers of ``model_id`` (the default tenant's is
    the id itself)."""
    return model_id if tenant in ("", DEFAULT_TENANT) else f"{model_id}@{tenant}"


def model_of(key: str) -> str:
    """The archive id of a routing key."""
    return key.partition("@")[0]


def belongs(key: str, wanted: str, *, every_tenant: bool = False) -> bool:
    """Whether ``key`` is ``wanted``, or with ``every_tenant`` any tenant's key of the
    archive ``wanted`` names."""
    return key == wanted or (every_tenant and model_of(key) == model_of(wanted))
