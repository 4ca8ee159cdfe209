"""Pytrees of tensors ⇄ flat leaves and a :class:`Tree`, shared by the client and the server.

A model may take and return nested tuples, lists and string-keyed dicts of tensors (a
Hugging Face-style ``{"logits": ..., "hidden": ...}``). On the wire such a value is its
tensor leaves, depth first, plus a ``jacserve.v1.Tree`` saying how they nest; dicts keep
their insertion order, as ``torch.utils._pytree`` flattens them.

NOTE: [Leaf names]
A leaf is named by its path: the dict keys and sequence indices on the way to it,
joined by ``"."`` — ``"logits"``, ``"hidden.0"``, and for a method's inputs (a tuple of
its arguments) ``"0"``, ``"1.input_ids"``. A lone tensor has the empty name. Names are
for people (messages, the CLI, ``input_names``/``output_names`` of results); a key that
itself holds a ``"."`` makes a name ambiguous, but never the structure, which the Tree
carries exactly.

>>> leaves, tree = flatten({"logits": torch.zeros(2), "hidden": (torch.ones(1),)})
>>> tree.leaf_names()
['logits', 'hidden.0']
>>> tree.unflatten([torch.ones(2), torch.zeros(1)])
{'logits': tensor([1., 1.]), 'hidden': (tensor([0.]),)}
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jacserve.v1 import jacobian_service_pb2 as pb

# torch is optional for the client: a leaf is a torch tensor only once torch is imported

__all__ = ["MAX_DEPTH", "StructureError", "Tree", "flatten"]

MAX_DEPTH = 32
"""Deepest nesting accepted from the wire."""

_KIND_TO_WIRE = {
    "tensor": pb.TREE_KIND_TENSOR,
    "tuple": pb.TREE_KIND_TUPLE,
    "list": pb.TREE_KIND_LIST,
    "dict": pb.TREE_KIND_DICT,
}
_KIND_FROM_WIRE = {v: k for k, v in _KIND_TO_WIRE.items()}


class StructureError(ValueError):
    """A value that is not a pytree of tensors, or does not match the structure expected."""


@dataclass(frozen=True)
class Tree:
    """The structure of a pytree: ``kind`` is ``"tensor"`` (a leaf), ``"tuple"``,
    ``"list"`` or ``"dict"``; ``children`` are the items or values; ``keys`` a dict's keys.

    >>> Tree.of_args(2).describe()
    '(*, *)'
    """

    kind: str
    children: tuple[Tree, ...] = ()
    keys: tuple[str, ...] = ()

    @classmethod
    def leaf(cls) -> Tree:
        """A tensor."""
        return cls("tensor")

    @classmethod
    def of_args(cls, count: int) -> Tree:
        """``count`` positional tensor arguments: a tuple of leaves."""
        return cls("tuple", tuple(cls.leaf() for _ in range(count)))

    @property
    def num_leaves(self) -> int:
        """How many tensors the structure holds."""
        if self.kind == "tensor":
            return 1
        return sum(child.num_leaves for child in self.children)

    def is_plain(self) -> bool:
        """A tensor or a tuple of tensors (what jacserve served before trees existed).

        >>> Tree.of_args(3).is_plain(), flatten({"a": torch.zeros(1)})[1].is_plain()
        (True, False)
        """
        if self.kind == "tensor":
            return True
        return self.kind == "tuple" and all(c.kind == "tensor" for c in self.children)

    def unflatten(self, leaves: Sequence[Any]) -> Any:
        """Put ``leaves`` (one per leaf, in order) back into this structure.

        Raises:
            StructureError: when the number of leaves differs.
        """
        if len(leaves) != self.num_leaves:
            raise StructureError(
                f"expected {self.num_leaves} leaves for structure {self.describe()}; "
                f"got {len(leaves)}"
            )
        iterator = iter(leaves)
        return self._build(lambda: next(iterator))

    def _build(self, take: Callable[[], Any]) -> Any:
        if self.kind == "tensor":
            return take()
        items = [child._build(take) for child in self.children]
        if self.kind == "dict":
            return dict(zip(self.keys, items, strict=True))
        return tuple(items) if self.kind == "tuple" else items

    def leaf_names(self, prefix: str = "") -> list[str]:
        """Every leaf's path name, in leaf order (see NOTE: [Leaf names])."""
        if self.kind == "tensor":
            return [prefix]
        labels = self.keys if self.kind == "dict" else [str(i) for i in range(len(self.children))]
        names: list[str] = []
        for label, child in zip(labels, self.children, strict=True):
            names += child.leaf_names(f"{prefix}.{label}" if prefix else label)
        return names

    def describe(self) -> str:
        """A compact picture for messages: ``*`` a tensor, ``(…)``, ``[…]``, ``{'k': …}``.

        >>> flatten({"a": [torch.zeros(1)], "b": torch.zeros(1)})[1].describe()
        "{'a': [*], 'b': *}"
        """
        if self.kind == "tensor":
            return "*"
        parts = [c.describe() for c in self.children]
        if self.kind == "dict":
            return (
                "{" + ", ".join(f"{k!r}: {p}" for k, p in zip(self.keys, parts, strict=True)) + "}"
            )
        if self.kind == "list":
            return "[" + ", ".join(parts) + "]"
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"

    def to_wire(self) -> pb.Tree:
        """The ``jacserve.v1.Tree`` message."""
        return pb.Tree(
            kind=_KIND_TO_WIRE[self.kind],
            children=[c.to_wire() for c in self.children],
            keys=list(self.keys),
        )

    @classmethod
    def from_wire(cls, message: pb.Tree, *, what: str = "tree", depth: int = 0) -> Tree:
        """Read and validate a ``jacserve.v1.Tree`` message.

        Raises:
            StructureError: an unknown kind, keys that do not match the children, a
                tensor with children, repeated dict keys, or nesting past
                :data:`MAX_DEPTH`.

        >>> Tree.from_wire(Tree.of_args(1).to_wire()).describe()
        '(*,)'
        """
        if depth > MAX_DEPTH:
            raise StructureError(f"{what}: nested deeper than {MAX_DEPTH} levels")
        kind = _KIND_FROM_WIRE.get(message.kind)
        if kind is None:
            raise StructureError(
                f"{what}: expected kind TENSOR, TUPLE, LIST or DICT; got {message.kind}"
            )
        keys = tuple(message.keys)
        if kind == "tensor" and (message.children or keys):
            raise StructureError(f"{what}: a TENSOR node has no children or keys")
        if kind == "dict" and (len(keys) != len(message.children) or len(set(keys)) != len(keys)):
            raise StructureError(
                f"{what}: a DICT node needs one distinct key per child; got {len(keys)} "
                f"key(s) for {len(message.children)} child(ren)"
            )
        if kind in ("tuple", "list") and keys:
            raise StructureError(f"{what}: only a DICT node has keys")
        children = tuple(cls.from_wire(c, what=what, depth=depth + 1) for c in message.children)
        return cls(kind, children, keys)


def flatten(
    value: Any,
    *,
    what: str = "value",
    like: Tree | None = None,
    convert: Callable[[Any], Any] | None = None,
) -> tuple[list[Any], Tree]:
    """The tensor leaves of ``value`` (depth first) and its :class:`Tree`.

    Tuples (named tuples too), lists and mappings with string keys nest; anything else
    must be a torch tensor (or what ``convert`` turns into one: the client's NumPy path
    keeps NumPy arrays as leaves).

    Args:
        value: the pytree.
        what: what it is, for messages (``"the output of method 'forward'"``).
        like: a structure ``value`` must have; dicts are then taken in ``like``'s key
            order (matched by key), and a tuple may stand for a list or the reverse.
        convert: applied to every leaf that is not a tensor (for example
            ``torch.as_tensor`` for NumPy arrays); errors become :class:`StructureError`.

    Raises:
        StructureError: a leaf that is not a tensor (``None`` included), a dict key that
            is not a string, or a mismatch with ``like``; the message names the leaf.

    >>> flatten((torch.zeros(1), [torch.ones(2)]))[1].describe()
    '(*, [*])'
    >>> flatten({"a": 1.0}, what="output")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    StructureError: output 'a' is a float, not a tensor; ...
    """
    leaves: list[Any] = []
    tree = _flatten(value, what, "", like, convert, leaves, 0)
    return leaves, tree


def _where(what: str, path: str) -> str:
    return f"{what} {path!r}" if path else what


def _flatten(
    value: Any,
    what: str,
    path: str,
    like: Tree | None,
    convert: Callable[[Any], Any] | None,
    leaves: list[Any],
    depth: int,
) -> Tree:
    if depth > MAX_DEPTH:
        raise StructureError(f"{_where(what, path)} is nested deeper than {MAX_DEPTH} levels")
    join = lambda label: f"{path}.{label}" if path else str(label)  # noqa: E731
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise StructureError(
                    f"{_where(what, path)} has a dict key {key!r} ({type(key).__name__}); "
                    "only string keys are supported"
                )
        keys = tuple(value)
        if like is not None:
            if like.kind != "dict" or set(like.keys) != set(keys):
                raise StructureError(
                    f"{_where(what, path)}: expected {like.describe()}; got a dict with keys "
                    f"{list(keys)}"
                )
            keys = like.keys
        children = tuple(
            _flatten(value[k], what, join(k), like.children[i] if like else None, convert,
                     leaves, depth + 1)
            for i, k in enumerate(keys)
        )  # fmt: skip
        return Tree("dict", children, keys)
    if isinstance(value, tuple | list):
        kind = "tuple" if isinstance(value, tuple) else "list"
        if like is not None:
            if like.kind not in ("tuple", "list") or len(like.children) != len(value):
                raise StructureError(
                    f"{_where(what, path)}: expected {like.describe()}; got a {kind} of "
                    f"{len(value)}"
                )
            kind = like.kind
        children = tuple(
            _flatten(item, what, join(i), like.children[i] if like else None, convert,
                     leaves, depth + 1)
            for i, item in enumerate(value)
        )  # fmt: skip
        return Tree(kind, children)
    if like is not None and like.kind != "tensor":
        raise StructureError(
            f"{_where(what, path)}: expected {like.describe()}; got a {type(value).__name__}"
        )
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor):
        if convert is None or value is None:
            raise StructureError(
                f"{_where(what, path)} is a {type(value).__name__}, not a tensor; return "
                "(or pass) tensors in tuples, lists and string-keyed dicts only"
            )
        try:
            value = convert(value)
        except Exception as exc:
            raise StructureError(
                f"{_where(what, path)}: cannot make a tensor of a {type(value).__name__} "
                f"({type(exc).__name__}: {exc})"
            ) from None
    leaves.append(value)
    return Tree.leaf()
