"""Faster decoding of a .pt2 program's JSON inside ``torch.export.load``.

NOTE: [Decoding a .pt2 program]
``torch.export.load`` turns the archive's JSON into the dataclasses of
``torch._export.serde.schema`` with ``serialize._dict_to_dataclass``, which calls
``typing.get_type_hints(cls, globalns=vars(schema))`` again for every object it builds:
for the 2,500 nodes of a 100-step RK4 program that is ~110,000 calls and more than half
of the load (measured: bench/upload.py). A schema class's annotations do not change while
a process runs, so inside :func:`fast_schema_decoding` the name ``typing`` in torch's
``serialize`` module is bound to :class:`_TypingWithRememberedHints`, a view of the
``typing`` module whose ``get_type_hints`` remembers its answer per class and namespace.
Torch's own decoder runs unchanged, making the same decisions on the same values; only
the repeated resolution of the same annotations is saved. Outside the block (and where
torch's module has no such name) nothing changes. Both the server's worker (loading an
upload) and the SDK (loading its own archive back to verify it) use it.

>>> import io, torch
>>> buffer = io.BytesIO()
>>> torch.export.save(torch.export.export(torch.nn.Tanh(), (torch.ones(2),)), buffer)
>>> with fast_schema_decoding():
...     program = torch.export.load(io.BytesIO(buffer.getvalue()))
>>> program.module()(torch.zeros(2))
tensor([0., 0.])
"""

from __future__ import annotations

import contextlib
import threading
import types
import typing
from collections.abc import Iterator
from typing import Any

__all__ = ["enabled", "fast_schema_decoding"]

enabled = True
"""Set to False to load with torch's own resolution of annotations (bench/upload.py)."""


class _TypingWithRememberedHints(types.SimpleNamespace):
    """The ``typing`` module, except that ``get_type_hints`` answers each (object,
    namespaces, extras) once and then from memory (a copy, so callers may change it).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Point:
    ...     x: int
    >>> view = _TypingWithRememberedHints()
    >>> view.get_type_hints(Point), view.get_type_hints(Point) is view.get_type_hints(Point)
    ({'x': <class 'int'>}, False)
    >>> view.Union is typing.Union
    True
    """

    def __init__(self) -> None:
        super().__init__()
        # value: (hints, the namespaces themselves: alive, so their ids stay theirs)
        self._hints: dict[tuple[Any, ...], tuple[dict[str, Any], Any, Any]] = {}
        self._lock = threading.Lock()

    def get_type_hints(
        self,
        obj: Any,
        globalns: dict[str, Any] | None = None,
        localns: dict[str, Any] | None = None,
        include_extras: bool = False,
    ) -> dict[str, Any]:
        """``typing.get_type_hints``, remembered (namespaces by identity)."""
        key = (obj, id(globalns), id(localns), include_extras)
        with self._lock:
            known = self._hints.get(key)
        if known is None:
            hints = typing.get_type_hints(
                obj, globalns=globalns, localns=localns, include_extras=include_extras
            )
            known = (hints, globalns, localns)
            with self._lock:
                self._hints[key] = known
        return dict(known[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(typing, name)


_VIEW = _TypingWithRememberedHints()
_LOCK = threading.Lock()
_users = 0


@contextlib.contextmanager
def fast_schema_decoding() -> Iterator[None]:
    """Inside, ``torch.export.load`` resolves each schema annotation once (see NOTE:
    [Decoding a .pt2 program]); nested and concurrent blocks are fine."""
    global _users
    try:
        from torch._export.serde import serialize
    except ImportError:  # another torch layout: nothing to speed up
        serialize = None
    usable = (
        enabled
        and serialize is not None
        and getattr(serialize, "typing", None)
        in (
            typing,
            _VIEW,
        )
    )
    if not usable:
        yield
        return
    with _LOCK:
        _users += 1
        serialize.typing = _VIEW
    try:
        yield
    finally:
        with _LOCK:
            _users -= 1
            if _users == 0:
                serialize.typing = typing
