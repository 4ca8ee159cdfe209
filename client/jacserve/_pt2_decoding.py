"""A faster drop-in for the JSON → schema decoding inside ``torch.export.load``.

NOTE: [Decoding a .pt2 program]
``torch.export.load`` turns the archive's JSON into the dataclasses of
``torch._export.serde.schema`` with ``serialize._dict_to_dataclass``, which resolves the
class and calls ``typing.get_type_hints`` again for every object it builds: for the 2,500
nodes of a 100-step RK4 program that is ~110,000 calls and more than half of the load
(measured: bench/upload.py). :func:`fast_schema_decoding` swaps in a decoder that makes
exactly the same decisions, in the same order, on the same values (it is a transcription
of torch 2.13's function), but resolves each annotation once and keeps a per-class plan
of (field, decoder). It decodes nothing torch would not: the same classes get the same
fields, unknown keys are ignored as torch ignores them, and what torch refuses it
refuses with the same exception types. ``tests/registry/test_pt2_decoding.py`` compares
the two on whole programs. Both the server's worker (loading an upload) and the SDK
(loading its own archive back to verify it) use it; it is installed only for the
duration of the ``with`` block and only if torch's function is the one it transcribes.

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
import dataclasses
import threading
import types
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any

__all__ = ["TRANSCRIBED_TORCH", "decode_schema", "fast_schema_decoding"]

TRANSCRIBED_TORCH = "2.13."
"""The torch release whose ``_dict_to_dataclass`` :func:`decode_schema` transcribes."""

_Decoder = Callable[[Any], Any]
_DECODERS: dict[Any, _Decoder] = {}
_LOCK = threading.RLock()
_depth = 0
_SAVED: list[tuple[Any, Any]] = []


def _schema() -> tuple[types.ModuleType, type]:
    from torch._export.serde import schema
    from torch._export.serde.union import _Union

    return schema, _Union


def _resolve(cls: Any) -> Any:
    """``serialize._resolve_schema_cls``: a name or forward reference → the schema class."""
    schema, _ = _schema()
    if isinstance(cls, str):
        resolved = getattr(schema, cls, None)
        if resolved is not None:
            return resolved
    if isinstance(cls, typing.ForwardRef):
        return _resolve(cls.__forward_arg__)
    return cls


def _decoder(annotation: Any) -> _Decoder:
    """The decoder of values annotated ``annotation``, built once per annotation."""
    try:
        found = _DECODERS.get(annotation)
    except TypeError:  # an unhashable annotation: build it each time
        return _build(annotation)
    if found is None:
        found = _DECODERS[annotation] = _build(annotation)
    return found


def _build(annotation: Any) -> _Decoder:
    schema, union = _schema()
    cls = _resolve(annotation)
    if isinstance(cls, str):
        raise AssertionError(f"Unresolved class type: '{cls}'.")
    origin = typing.get_origin(cls)
    if origin is Annotated:
        return _decoder(cls.__origin__)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
        arguments = typing.get_args(cls)

        def optional(data: Any) -> Any:
            if data is None:
                return None
            if len(arguments) != 2:
                raise AssertionError(f"expected 2 type args, got {len(arguments)}")
            return _decoder(arguments[0])(data)

        return optional
    if isinstance(cls, type) and issubclass(cls, union):
        hints = typing.get_type_hints(cls, globalns=vars(schema))

        def tagged(data: Any) -> Any:
            if not isinstance(data, dict):
                raise AssertionError(f"expected dict, got {type(data).__name__}")
            if len(data) != 1:
                raise AssertionError(f"expected dict with 1 key, got {len(data)}")
            ((tag, value),) = data.items()
            if not isinstance(tag, str):
                raise AssertionError(f"expected str key, got {type(tag).__name__}")
            return cls.create(**{tag: _decoder(hints[tag])(value)})

        return tagged
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls, globalns=vars(schema))
        names = [f.name for f in dataclasses.fields(cls)]
        plan: list[tuple[str, _Decoder]] = []

        def record(data: Any) -> Any:
            if len(plan) != len(names):  # built on first use: schema types refer to each other
                plan[:] = [(name, _decoder(hints[name])) for name in names]
            return cls(**{name: decode(data[name]) for name, decode in plan if name in data})

        return record
    arguments = typing.get_args(cls)

    def other(data: Any) -> Any:
        if isinstance(data, list):
            if len(data) == 0:
                return data
            decode = _decoder(arguments[0])
            return [decode(item) for item in data]
        if isinstance(data, dict):
            decode = _decoder(arguments[1])
            return {key: decode(value) for key, value in data.items()}
        if cls is float:
            return float(data)
        return data

    return other


def decode_schema(cls: Any, data: Any) -> Any:
    """``data`` (parsed JSON) as the schema type ``cls``, as torch's
    ``_dict_to_dataclass`` decodes it (see NOTE: [Decoding a .pt2 program]).

    >>> from torch._export.serde import schema
    >>> decode_schema(schema.Device, {"type": "cpu", "index": None})
    Device(type='cpu', index=None)
    """
    return _decoder(cls)(data)


@contextlib.contextmanager
def fast_schema_decoding() -> Iterator[None]:
    """Within the block, ``torch.export.load`` decodes its JSON with :func:`decode_schema`.

    Nested and concurrent blocks are fine (the first in installs, the last out restores).
    It installs nothing under another torch than the one it transcribes
    (:data:`TRANSCRIBED_TORCH`): there torch decodes as it always does.
    """
    global _depth
    import torch
    from torch._export.serde import serialize
    from torch.export.pt2_archive import _package

    with _LOCK:
        if _depth == 0 and torch.__version__.startswith(TRANSCRIBED_TORCH):
            _SAVED.clear()
            for module in (serialize, _package):
                if callable(getattr(module, "_dict_to_dataclass", None)):
                    _SAVED.append((module, module._dict_to_dataclass))
                    module._dict_to_dataclass = decode_schema
        _depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                for module, original in _SAVED:
                    module._dict_to_dataclass = original
                _SAVED.clear()
