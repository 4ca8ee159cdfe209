"""A faster ``torch.export.save`` for the SDK: the same archive, a cheaper self-check.

NOTE: [Saving a .pt2 program]
``torch.export.save`` serializes the program to schema dataclasses, then, to "test
canonical form is well defined", runs ``serialize.canonicalize`` on a ``copy.deepcopy``
of them and throws the result away. For a 100-step RK4 program (2,500 nodes) that deep
copy is 40% of the save (bench/upload.py). :func:`fast_canonical_check` keeps the check
(canonicalize still runs on a full, independent copy) but makes the copy with
:func:`copy_schema`, which knows the schema's types: lists, dicts, tuples and schema
dataclasses are copied field by field with the same sharing (a memo, as ``deepcopy``
keeps one), strings, numbers and enums are immutable and shared, and anything else goes
to ``copy.deepcopy``. The bytes written are the same
(``tests/e2e/test_upload_large_program.py`` compares them).

>>> import io, torch
>>> program = torch.export.export(torch.nn.Tanh(), (torch.ones(2),))
>>> plain, fast = io.BytesIO(), io.BytesIO()
>>> torch.export.save(program, plain)
>>> with fast_canonical_check():
...     torch.export.save(program, fast)
>>> plain.getvalue() == fast.getvalue()
True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import threading
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["copy_schema", "fast_canonical_check"]

_ATOMIC = (str, int, float, bool, type(None), bytes, complex)
_LOCK = threading.RLock()
_depth = 0
_SAVED: list[tuple[Any, Any]] = []


def copy_schema(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A deep copy of a tree of ``torch._export.serde.schema`` objects, as
    ``copy.deepcopy`` makes it (see NOTE: [Saving a .pt2 program]).

    >>> from torch._export.serde import schema
    >>> a = schema.Device(type="cpu", index=None)
    >>> pair = [a, a]
    >>> copied = copy_schema(pair)
    >>> copied == pair, copied[0] is not a, copied[0] is copied[1]
    (True, True, True)
    """
    from torch._export.serde.union import _UnionTag

    memo = {} if memo is None else memo
    kind = type(value)
    if kind in _ATOMIC or isinstance(value, enum.Enum | type):
        return value
    found = memo.get(id(value))
    if found is not None:
        return found
    if kind is list:
        copied: Any = []
        memo[id(value)] = copied
        copied.extend(copy_schema(item, memo) for item in value)
    elif kind is dict:
        copied = {}
        memo[id(value)] = copied
        for key, item in value.items():
            copied[copy_schema(key, memo)] = copy_schema(item, memo)
    elif kind is tuple:
        copied = tuple(copy_schema(item, memo) for item in value)
        memo[id(value)] = copied
    elif kind is _UnionTag:
        copied = memo[id(value)] = _UnionTag.create(str(value), value._cls)
    elif _is_schema_record(kind):
        copied = kind.__new__(kind)
        memo[id(value)] = copied
        state = object.__getattribute__(value, "__dict__")  # unions hide unset fields
        copied.__dict__.update({key: copy_schema(item, memo) for key, item in state.items()})
    else:
        return copy.deepcopy(value, memo)
    return copied


_CUSTOM_COPY = ("__slots__", "__deepcopy__", "__getstate__", "__setstate__", "__reduce__",
                "__reduce_ex__")  # fmt: skip


def _is_schema_record(kind: type) -> bool:
    """A dataclass of torch's export schema whose state is its ``__dict__``: what
    ``copy.deepcopy`` copies as ``__new__`` plus a deep copy of ``__dict__``."""
    return (
        dataclasses.is_dataclass(kind)
        and getattr(kind, "__module__", "").startswith("torch._export.serde.")
        and not any(name in vars(k) for k in kind.__mro__[:-1] for name in _CUSTOM_COPY)
    )


@contextlib.contextmanager
def fast_canonical_check() -> Iterator[None]:
    """Within the block, ``torch.export.save``'s canonical-form check copies the
    program with :func:`copy_schema` (nested and concurrent blocks are fine)."""
    global _depth
    from torch._export.serde import serialize

    with _LOCK:
        if _depth == 0 and getattr(serialize, "copy", None) is copy:
            proxy = types.SimpleNamespace(**vars(copy))
            proxy.deepcopy = copy_schema
            _SAVED.append((serialize, serialize.copy))
            serialize.copy = proxy
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                for module, original in _SAVED:
                    module.copy = original
                _SAVED.clear()
