"""What a module or function's derivative depends on, as a digest (the SDK's archive cache key).

The digest covers the code of every method of every submodule's class (bytecode and
constants, nested functions included), every plain attribute of every submodule, every
parameter and buffer (bytes, not just shapes), a function's closure and the globals its
code names, and the example inputs' signature. A value it cannot describe faithfully
(an object without a stable representation) makes it return ``None``: the model is then
serialized again on every call rather than risk an old archive's answer.

>>> import torch
>>> a = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
>>> b = torch.nn.Sequential(a[0], torch.nn.ReLU())  # same weights, another activation
>>> fingerprint(a, (torch.ones(2),)) != fingerprint(b, (torch.ones(2),))
True
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

from jacserve.pytree import flatten

__all__ = ["fingerprint"]

_PLAIN = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device)
_MODULE_INTERNALS = {"_parameters", "_buffers", "_modules", "training"}


class _Undescribable(Exception):
    """A value whose content the digest cannot capture."""


def _code(digest: Any, code: types.CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            _code(digest, constant)
        else:
            digest.update(repr(constant).encode())


def _value(digest: Any, value: Any, depth: int = 0) -> None:
    """Add a plain value, a container of them, a tensor or a function."""
    if depth > 8:
        raise _Undescribable("nested too deeply")
    if isinstance(value, torch.Tensor):
        _tensor(digest, "value", value)
    elif isinstance(value, _PLAIN):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, list | tuple | set | frozenset):
        digest.update(f"{type(value).__name__}[{len(value)}]".encode())
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        for item in items:
            _value(digest, item, depth + 1)
    elif isinstance(value, dict):
        digest.update(f"dict[{len(value)}]".encode())
        for key in sorted(value, key=repr):
            _value(digest, key, depth + 1)
            _value(digest, value[key], depth + 1)
    elif isinstance(value, types.FunctionType):
        _function(digest, value, depth + 1)
    elif isinstance(value, types.ModuleType | types.BuiltinFunctionType | type):
        name = getattr(value, "__qualname__", value.__name__)
        digest.update(f"{getattr(value, '__module__', '')}.{name}".encode())
    else:
        raise _Undescribable(type(value).__name__)


def _function(digest: Any, fn: types.FunctionType, depth: int = 0) -> None:
    digest.update(f"fn:{fn.__module__}.{fn.__qualname__}".encode())
    _code(digest, fn.__code__)
    _value(digest, fn.__defaults__ or (), depth + 1)
    for cell in fn.__closure__ or ():
        _value(digest, cell.cell_contents, depth + 1)
    for name in fn.__code__.co_names:  # the globals it reads, one level deep
        if name in fn.__globals__:
            value = fn.__globals__[name]
            if isinstance(value, types.FunctionType) and depth < 3:
                _function(digest, value, depth + 1)
            elif isinstance(value, _PLAIN):
                _value(digest, value, depth + 1)


def _tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
    data = tensor.detach().cpu().contiguous()
    digest.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")


def _class(digest: Any, cls: type) -> None:
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.") and klass is not cls:
            digest.update(f"base:{klass.__module__}.{klass.__qualname__}".encode())
            continue  # torch's own classes: their version is in the archive format anyway
        for name, member in sorted(vars(klass).items()):
            if isinstance(member, types.FunctionType):
                digest.update(name.encode())
                _function(digest, member)


def _module(digest: Any, module: torch.nn.Module) -> None:
    for prefix, submodule in module.named_modules(remove_duplicate=False):
        digest.update(
            f"module:{prefix}:{type(submodule).__module__}.{type(submodule).__qualname__}".encode()
        )
        _class(digest, type(submodule))
        digest.update(f"training:{submodule.training}".encode())
        for name, value in sorted(vars(submodule).items()):
            if name not in _MODULE_INTERNALS:  # hooks included: they change the output
                digest.update(f"attr:{name}".encode())
                _value(digest, value)
        for name, tensor in [*submodule._parameters.items(), *submodule._buffers.items()]:
            if tensor is not None:
                _tensor(digest, f"{prefix}.{name}", tensor)


def fingerprint(model: torch.nn.Module | Callable[..., Any], example: Sequence[Any]) -> str | None:
    """The digest of ``model`` with inputs like ``example``; ``None`` when some part of
    it cannot be described (then it must be serialized afresh)."""
    digest = hashlib.sha256()
    try:
        if isinstance(model, torch.nn.Module):
            _module(digest, model)
        elif isinstance(model, types.FunctionType):
            _function(digest, model)
        else:
            digest.update(
                f"callable:{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', repr(model))}".encode()
            )
            if not isinstance(model, types.BuiltinFunctionType):
                return None  # a callable object: its state is not ours to read
    except _Undescribable:
        return None
    leaves, tree = flatten(tuple(example), what="example_inputs")
    digest.update(f"tree:{tree.describe()}".encode())  # nested inputs: their structure too
    for tensor in leaves:
        digest.update(f"in:{tensor.dtype}:{tuple(tensor.shape)}".encode())
    return digest.hexdigest()
