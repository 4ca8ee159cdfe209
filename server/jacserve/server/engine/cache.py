"""Per-model memo of what the engine learns about a model at a given input signature.

The engine itself keeps no state; callers that want "measure once, reuse" (the server,
per loaded model) pass a :class:`DerivativeCache` to the engine's functions. Entries are
small records (cost estimates, memory profiles, whether the vectorized path was checked)
charged a fixed per-entry size, or larger ones (a sparsity pattern) charged their size;
the cache is bounded by the sum.

>>> cache = DerivativeCache(max_bytes=1024)
>>> cache.get(("k",)) is None
True
>>> cache.put(("k",), 42)
True
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
    """A thread-safe LRU of records, bounded in bytes (``ENTRY_BYTES`` per small entry)."""

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max(ENTRY_BYTES, max_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._charged = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The record for ``key``, or ``None``; marks it recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int = ENTRY_BYTES) -> bool:
        """Store a record charged ``nbytes``, evicting the least recently used beyond the
        byte bound; ``False`` (nothing stored) when it alone is above the bound."""
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._charged -= previous[1]
            self._entries[key] = (value, nbytes)
            self._charged += nbytes
            while self._charged > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._charged -= dropped
        return True

    @property
    def nbytes(self) -> int:
        """Bytes charged for the current entries."""
        with self._lock:
            return self._charged
