"""Per-model memo of what the engine learns about a model at a given input signature.

The engine itself keeps no state; callers that want "measure once, reuse" (the server,
per loaded model) pass a :class:`DerivativeCache` to the engine's functions. Entries are
small records (cost estimates, memory profiles, whether the vectorized path was checked),
so the cache is bounded by entry count × a fixed per-entry size.

>>> cache = DerivativeCache(max_bytes=1024)
>>> cache.get(("k",)) is None
True
>>> cache.put(("k",), 42)
>>> cache.get(("k",))
42
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import torch

__all__ = ["ENTRY_BYTES", "DerivativeCache", "signature_of"]

ENTRY_BYTES = 512
"""Bytes charged per entry: a key of shapes and a small record."""


def signature_of(tensors: Sequence[torch.Tensor]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """The hashable (dtype, shape, device) signature of a sequence of tensors.

    >>> signature_of([torch.zeros(2, 3)])
    (('torch.float32', (2, 3), 'cpu'),)
    """
    return tuple((str(t.dtype), tuple(t.shape), str(t.device)) for t in tensors)


class DerivativeCache:
    """A thread-safe LRU of small records, bounded in bytes (``ENTRY_BYTES`` per entry)."""

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self._max_entries = max(1, max_bytes // ENTRY_BYTES)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The record for ``key``, or ``None``; marks it recently used."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store a record, evicting the least recently used beyond the byte bound."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        """Bytes charged for the current entries."""
        with self._lock:
            return len(self._entries) * ENTRY_BYTES
