"""Tenants: who a caller is, from the bearer token it sent.

``--auth-token-file`` holds one token per line, ``TENANT:TOKEN`` or a bare ``TOKEN``
(tenant ``default``); several lines may name one tenant (token rotation). Without tokens
every caller is ``default``. A tenant sees, uses and deletes only the models it uploaded
(:mod:`~jacserve.server.registry.ownership`), and its requests run in workers of its own.

>>> table = TokenTable.parse(["alice:t1", "t2", "# a comment", ""])
>>> table.tenant_of("Bearer t1"), table.tenant_of("bearer t2"), table.tenant_of("Bearer x")
('alice', 'default', None)
>>> table.tenants
('alice', 'default')
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_TENANT", "PUBLIC", "TenantLabels", "TokenTable", "check_tenant", "tenant_of"]

DEFAULT_TENANT = "default"
"""The tenant of a bare token, and of every caller of a server without tokens."""
PUBLIC = "*"
"""The owner of archives placed in the store by the operator: every tenant may use them."""
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_tenant(name: str) -> str:
    """Return ``name`` if it can name a tenant (1-63 letters, digits, ``.``, ``_``,
    ``-``; not starting with a punctuation mark).

    >>> check_tenant("team-a")
    'team-a'
    >>> check_tenant("a/b")
    Traceback (most recent call last):
    ValueError: tenant name 'a/b' ...: use 1-63 letters, digits, '.', '_' or '-'
    """
    if not _TENANT.fullmatch(name):
        raise ValueError(
            f"tenant name {name[:80]!r} in the token file is not allowed: use 1-63 letters, "
            "digits, '.', '_' or '-'"
        )
    return name


class TokenTable:
    """Accepted bearer tokens and the tenant of each; lookups take the same time
    whichever token matches (or none does).

    Args:
        entries: (tenant, token) pairs.

    Raises:
        ValueError: no entries, a bad tenant name, or one token given to two tenants.
    """

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self._entries: list[tuple[bytes, str]] = []
        owner: dict[str, str] = {}
        for tenant, token in entries:
            check_tenant(tenant)
            if owner.setdefault(token, tenant) != tenant:
                raise ValueError(
                    f"one token is given to two tenants ({owner[token]!r} and {tenant!r})"
                )
            self._entries.append((hashlib.sha256(token.encode()).digest(), tenant))
        if not self._entries:
            raise ValueError("token authentication needs at least one token")

    @classmethod
    def parse(cls, lines: Iterable[str]) -> TokenTable:
        """A table from token-file lines: ``TENANT:TOKEN`` or ``TOKEN``; blank lines and
        ``#`` comments are skipped."""
        entries = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            tenant, colon, token = line.partition(":")
            if colon:
                entries.append((tenant.strip(), token.strip()))
            else:
                entries.append((DEFAULT_TENANT, line))
        return cls(e for e in entries if e[1])

    @property
    def tenants(self) -> tuple[str, ...]:
        """The configured tenants, sorted."""
        return tuple(sorted({tenant for _, tenant in self._entries}))

    def tenant_of(self, header: str) -> str | None:
        """The tenant of an ``authorization`` header value, or ``None`` if its token is
        not accepted."""
        scheme, _, token = header.partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for digest, tenant in self._entries:  # no early exit: the time is the same for all
            if hmac.compare_digest(given, digest):
                found = tenant
        return found if scheme.lower() == "bearer" else None


def tenant_of(context: Any, table: TokenTable | None) -> str:
    """The tenant of a call (``default`` on a server without tokens). The token was
    already checked by the interceptor; a call that reaches here without an accepted
    one is refused there, so ``default`` is never granted by mistake: without a table
    nobody has another tenant.

    >>> tenant_of(None, None)
    'default'
    """
    if table is None:
        return DEFAULT_TENANT
    metadata = dict(context.invocation_metadata() or ())
    tenant = table.tenant_of(str(metadata.get("authorization", "")))
    if tenant is None:  # the interceptor refuses such calls; never serve one as anybody
        raise PermissionError("a call without an accepted token reached the service")
    return tenant


class TenantLabels:
    """Tenant names as metric label values, at most ``limit`` distinct ones (the rest
    are ``other``), so a long token file cannot explode the metrics' cardinality.

    >>> labels = TenantLabels(limit=2)
    >>> [labels.label(t) for t in ("a", "b", "c", "a")]
    ['a', 'b', 'other', 'a']
    """

    def __init__(self, limit: int = 32) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def label(self, tenant: str) -> str:
        """The label value of ``tenant``."""
        if tenant in self._known:
            return tenant
        if len(self._known) < self._limit:
            self._known.add(tenant)
            return tenant
        return "other"
