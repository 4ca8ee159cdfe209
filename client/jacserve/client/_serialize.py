"""Serializing a torch model (``ScriptModule``, ``ExportedProgram``, ``nn.Module``, function)
into archive bytes: the torch half of :mod:`jacserve.client._archive`, imported only when
such a model is uploaded.

>>> serialize_model(torch.jit.script(torch.nn.Linear(2, 2)), None)[:2]
b'PK'
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from jacserve._pt2_decoding import fast_schema_decoding
from jacserve.client._fingerprint import fingerprint
from jacserve.client._pt2_saving import fast_canonical_check
from jacserve.pytree import StructureError, Tree, flatten

__all__ = ["serialize_model"]

# fingerprint → (archive, the archive loaded back), most recent last
_SERIALIZED: OrderedDict[str, tuple[bytes, Callable[..., Any]]] = OrderedDict()
_SERIALIZED_MAX = 32


class _Function(torch.nn.Module):
    """A plain Python function as a module, so that it can be exported or traced."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _tensors(value: Any) -> tuple[tuple[torch.Tensor, ...], Tree]:
    """The output's tensors and structure (tuples, lists, string-keyed dicts of tensors);
    anything else is not servable."""
    try:
        leaves, tree = flatten(value, what="the model's output")
    except StructureError as exc:
        raise TypeError(str(exc)) from None
    if not leaves:
        raise TypeError(f"the model must return tensors; it returned {type(value).__name__}")
    return tuple(leaves), tree


def _same(got: Any, expected: Any) -> None:
    """Raise unless two outputs have the same structure and (nearly) the same values."""
    (a_leaves, a_tree), (b_leaves, b_tree) = _tensors(got), _tensors(expected)
    if a_tree != b_tree:
        raise ValueError(f"output structure {a_tree.describe()} differs from {b_tree.describe()}")
    for a, b in zip(a_leaves, b_leaves, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


def _load(data: bytes) -> Callable[..., Any]:
    try:
        return torch.jit.load(io.BytesIO(data))
    except RuntimeError:
        with fast_schema_decoding():  # see NOTE: [Decoding a .pt2 program]
            return torch.export.load(io.BytesIO(data)).module()


def _reproduces(loaded: Callable[..., Any], model: Any, example: tuple[Any, ...]) -> bool:
    """Whether an archive loaded back gives the model's output on ``example``."""
    module = model if isinstance(model, torch.nn.Module) else _Function(model)
    try:
        _same(loaded(*example), module(*example))
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _without_stack_traces() -> Iterator[None]:
    """Export without recording each node's Python stack trace.

    torch.export records the stack of every traced call (``node.meta["stack_trace"]``):
    for a 100-step RK4 model that is a quarter of the export and of the archive, and it
    would send the user's file paths and source lines to the server, which never reads
    them. The program itself is the same.
    """
    config = torch.fx.config
    if not hasattr(config, "do_not_emit_stack_traces"):
        yield
        return
    saved = config.do_not_emit_stack_traces
    config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        config.do_not_emit_stack_traces = saved


def _export(module: torch.nn.Module, example: tuple[Any, ...]) -> torch.export.ExportedProgram:
    with _without_stack_traces():
        return torch.export.export(module, example)


def _serialize_module(model: Any, example: tuple[Any, ...]) -> tuple[bytes, Callable[..., Any]]:
    """torch.export first, then TorchScript scripting, then tracing; the first archive that
    loads back and reproduces the model's output on ``example`` wins, every failure named."""
    module = model if isinstance(model, torch.nn.Module) else _Function(model)
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("torch.export.export", lambda: _export(module, example)),
        ("torch.jit.script", lambda: torch.jit.script(module)),
        # strict=False: dict and list outputs trace as they are
        ("torch.jit.trace", lambda: torch.jit.trace(module, example, strict=False)),
    ]
    failures = []
    for name, make in attempts:
        buffer = io.BytesIO()
        try:
            expected = module(*example)
            _tensors(expected)  # servable output, else every way fails alike
            program = make()
            if isinstance(program, torch.export.ExportedProgram):
                with fast_canonical_check():  # see NOTE: [Saving a .pt2 program]
                    torch.export.save(program, buffer)
            else:
                torch.jit.save(program, buffer)
            loaded = _load(buffer.getvalue())
            _same(loaded(*example), expected)
            return buffer.getvalue(), loaded
        except Exception as exc:  # each way's failure goes into the message
            failures.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
    raise ValueError(
        f"upload: could not serialize {type(model).__name__} "
        f"{getattr(model, '__qualname__', '')}".rstrip()
        + " — "
        + "; ".join(failures)
        + ". Export or script it yourself and upload the result"
    )


def serialize_model(model: Any, example_inputs: Sequence[Any] | None) -> bytes:
    """Archive bytes of a torch model (see :func:`jacserve.client._archive.archive_bytes`).

    Raises:
        TypeError: not a torch model or function, or one without ``example_inputs``.
        ValueError: a module or function that none of the three ways can serialize.
    """
    buffer = io.BytesIO()
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, buffer)
        return buffer.getvalue()
    if isinstance(model, torch.export.ExportedProgram):
        with fast_canonical_check():  # see NOTE: [Saving a .pt2 program]
            torch.export.save(model, buffer)
        return buffer.getvalue()
    if isinstance(model, torch.nn.Module) or callable(model):
        if example_inputs is None:
            raise TypeError(
                f"upload: a {type(model).__name__} needs example_inputs to be exported or "
                "traced; pass example_inputs=(x,), or call jacobian/jvp/... with the model "
                "directly (their inputs serve as the example)"
            )
        try:
            leaves, tree = flatten(tuple(example_inputs), what="example_inputs",
                                   convert=torch.as_tensor)  # fmt: skip
        except StructureError as exc:
            raise TypeError(f"upload: {exc}") from None
        example = tuple(tree.unflatten(leaves))
        key = fingerprint(model, example)
        if key is None:  # something in it cannot be described: never reuse
            return _serialize_module(model, example)[0]
        cached = _SERIALIZED.get(key)
        if cached is None or not _reproduces(cached[1], model, example):
            cached = _SERIALIZED[key] = _serialize_module(model, example)
            while len(_SERIALIZED) > _SERIALIZED_MAX:
                _SERIALIZED.popitem(last=False)
        _SERIALIZED.move_to_end(key)
        return cached[0]
    raise TypeError(
        f"upload: expected a path, bytes, torch.jit.ScriptModule, torch.export."
        f"ExportedProgram, nn.Module or function; got {type(model).__name__}"
    )
