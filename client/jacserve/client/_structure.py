"""The SDK side of nested inputs and outputs: what to send, and results in the structure
``torch.func`` gives them (see :mod:`jacserve.pytree` and NOTE: [Leaf names] there).

Inputs are one argument or a tuple (or list) of the method's positional arguments; an
argument is a tensor (or NumPy array) or a nest of tuples, lists and string-keyed dicts
of them. ``wrt`` lists arguments; an argument is differentiated in its floating-point
leaves (its other leaves are passed through), and results over the differentiated
inputs — a VJP, an HVP, a Jacobian's blocks per output — come as the argument itself
when a single argument was passed, else as a tuple over the ``wrt`` arguments, each
holding the argument's floating leaves in its own structure. Outputs keep the method's
structure; a Jacobian is the output's structure with each leaf replaced by the blocks
over the inputs, as ``torch.func.jacrev(f, argnums)`` returns it.

>>> x = {"a": torch.ones(2), "n": torch.tensor(3)}
>>> call = call_inputs(x)
>>> call.wire_wrt, call.layout.describe()
([0], "{'a': *}")
>>> call.arrange([torch.zeros(2)])
{'a': tensor([0., 0.])}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jacserve.codec import as_array, is_torch_tensor, torch_loaded
from jacserve.pytree import StructureError, Tree, flatten
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["CallInputs", "call_inputs", "cotangent_leaves", "example_point", "output_tree"]


def leaf_converter(numpy: bool) -> Callable[[Any], Any]:
    """What makes a leaf of a non-tensor input: a NumPy array on the NumPy path (see
    :func:`call_inputs`), else a torch tensor (``torch.as_tensor``)."""
    if numpy:
        return as_array
    import torch

    return torch.as_tensor


def is_floating(leaf: Any) -> bool:
    """Whether a torch tensor or NumPy array holds floating-point numbers."""
    if is_torch_tensor(leaf):
        return bool(leaf.is_floating_point())
    return bool(np.issubdtype(leaf.dtype, np.floating))


def _is_container(value: Any) -> bool:
    return isinstance(value, tuple | list | dict)


def _arguments(inputs: Any) -> tuple[bool, list[Any]]:
    if isinstance(inputs, tuple | list):
        return True, list(inputs)
    return False, [inputs]


def _prune(tree: Tree, keep: list[bool]) -> Tree | None:
    """``tree`` with only the leaves whose flag (consumed in order from ``keep``) is set;
    containers left empty disappear."""
    if tree.kind == "tensor":
        return tree if keep.pop(0) else None
    kept = [(key, _prune(child, keep)) for key, child in zip(tree.keys or [None] * len(tree.children), tree.children, strict=True)]  # fmt: skip
    kept = [(key, child) for key, child in kept if child is not None]
    if not kept:
        return None
    keys = tuple(key for key, _ in kept) if tree.kind == "dict" else ()
    return Tree(tree.kind, tuple(child for _, child in kept), keys)


@dataclass(frozen=True)
class CallInputs:
    """A call's inputs: ``leaves`` (the tensors sent), ``tree`` (the tuple of arguments),
    ``wrt`` (the differentiated leaves), ``wire_wrt`` (what the request's ``wrt`` holds),
    ``layout`` (the structure of results over the differentiated leaves), ``numpy``
    (results come as NumPy arrays: see :func:`call_inputs`)."""

    leaves: tuple[Any, ...]
    tree: Tree
    as_tuple: bool
    wrt: tuple[int, ...]
    wire_wrt: list[int]
    layout: Tree
    numpy: bool = False

    @property
    def plain(self) -> bool:
        """Every argument is a tensor (no ``input_tree`` is sent)."""
        return self.tree.is_plain()

    @property
    def wire_tree(self) -> pb.Tree | None:
        """The request's ``input_tree``, or ``None`` when every argument is a tensor."""
        return None if self.plain else self.tree.to_wire()

    @property
    def input_names(self) -> tuple[str, ...]:
        """The differentiated leaves' names, in order: the N axis of flattened results."""
        names = self.tree.leaf_names()
        return tuple(names[j] for j in self.wrt)

    def arrange(self, values: Sequence[Any], what: str = "result") -> Any:
        """One value per differentiated leaf, in :attr:`layout`.

        Raises:
            ValueError: when the server sent another number of values.
        """
        if len(values) != self.layout.num_leaves:
            raise ValueError(
                f"{what}: expected {self.layout.num_leaves} tensors (one per differentiated "
                f"input leaf) from the server; got {len(values)}"
            )
        return self.layout.unflatten(list(values))

    @property
    def convert(self) -> Callable[[Any], Any]:
        """What makes a leaf of a non-tensor value in this call."""
        return leaf_converter(self.numpy)

    def flatten_like(self, value: Any, what: str) -> list[Any]:
        """Tangents or vectors given in :attr:`layout` (a tuple over the ``wrt``
        arguments, or the one argument's structure) as one tensor per differentiated leaf.

        Raises:
            ValueError: a structure unlike the differentiated inputs'.
        """
        if self.plain and not any(_is_container(v) for v in _arguments(value)[1]):
            return _arguments(value)[1]  # one per differentiated input, as always
        try:
            return flatten(value, what=what, like=self.layout, convert=self.convert)[0]
        except StructureError as exc:
            raise ValueError(f"{exc} (structured like the differentiated inputs)") from None

    def jacobian(self, blocks: Sequence[Any], outputs: Tree) -> Any:
        """Blocks ``[output leaf][differentiated leaf]`` (row-major) as ``jacrev`` lays
        them out.

        Raises:
            ValueError: when the number of blocks does not fit the structures.
        """
        width = self.layout.num_leaves
        if len(blocks) != outputs.num_leaves * width:
            raise ValueError(
                f"jacobian: expected {outputs.num_leaves} x {width} blocks (output leaves by "
                f"differentiated input leaves); got {len(blocks)}"
            )
        rows = [
            self.arrange(blocks[i * width : (i + 1) * width]) for i in range(outputs.num_leaves)
        ]
        return outputs.unflatten(rows)

    def hessian(self, blocks: Sequence[Any], outputs: Tree) -> Any:
        """Blocks ``[j][k]`` over the differentiated leaves, nested in :attr:`layout`
        twice; a dict or list output keeps its structure around it (``torch.func.hessian``).
        """
        width = self.layout.num_leaves
        if len(blocks) != width * width:
            raise ValueError(f"hessian: expected {width}² blocks; got {len(blocks)}")
        matrix = self.arrange(
            [self.arrange(blocks[j * width : (j + 1) * width]) for j in range(width)]
        )
        return matrix if outputs.is_plain() else outputs.unflatten([matrix])


def call_inputs(
    inputs: Any, wrt: Sequence[int] | None = None, *, numpy: bool | None = None
) -> CallInputs:
    """Read a call's inputs and ``wrt`` (argument indices; default: every argument with
    a floating-point leaf).

    ``numpy``: whether leaves and results are NumPy arrays rather than torch tensors; by
    default they are exactly when torch has not been imported (NumPy in, NumPy out, with
    no torch needed; torch tensors in, torch tensors out; a process that uses torch gets
    torch tensors for NumPy inputs too, as before torch was optional).

    Raises:
        TypeError: a leaf that is not a tensor or array, or a dict key that is not a string.
        ValueError: a ``wrt`` index out of range or repeated, or naming an argument
            without a floating-point leaf.

    >>> call = call_inputs((torch.ones(2), torch.zeros(3)), wrt=[1])
    >>> call.plain, call.wire_wrt, call.layout.describe()
    (True, [1], '(*,)')
    """
    numpy = not torch_loaded() if numpy is None else numpy
    as_tuple, arguments = _arguments(inputs)
    try:
        leaves, tree = flatten(tuple(arguments), what="inputs", convert=leaf_converter(numpy))
    except StructureError as exc:
        raise TypeError(str(exc)) from None
    floating = [is_floating(t) for t in leaves]
    if tree.is_plain():  # every argument a tensor: the server resolves wrt itself
        chosen = list(wrt) if wrt else [i for i, f in enumerate(floating) if f]
        layout = Tree.of_args(len(chosen)) if as_tuple else Tree.leaf()
        return CallInputs(
            tuple(leaves), tree, as_tuple, tuple(chosen), list(wrt or ()), layout, numpy
        )
    starts = [0]
    for argument in tree.children:
        starts.append(starts[-1] + argument.num_leaves)
    if wrt and (len(set(wrt)) != len(wrt) or not all(0 <= a < len(arguments) for a in wrt)):
        raise ValueError(
            f"wrt: expected distinct argument indices in 0..{len(arguments) - 1}; got {list(wrt)}"
        )
    chosen_arguments = list(wrt) if wrt else [a for a in range(len(arguments)) if any(floating[starts[a] : starts[a + 1]])]  # fmt: skip
    chosen, parts = [], []
    for a in chosen_arguments:
        flags = floating[starts[a] : starts[a + 1]]
        pruned = _prune(tree.children[a], list(flags))
        if pruned is None:
            raise ValueError(
                f"wrt: argument {a} has no floating-point tensor to differentiate; leave it "
                "out of wrt (it is still passed to the model)"
            )
        parts.append(pruned)
        chosen += [starts[a] + i for i, f in enumerate(flags) if f]
    # no floating leaf at all: the server says so where a derivative needs one
    layout = Tree("tuple", tuple(parts)) if as_tuple or not parts else parts[0]
    return CallInputs(tuple(leaves), tree, as_tuple, tuple(chosen), chosen, layout, numpy)


def cotangent_leaves(
    value: Any, convert: Callable[[Any], Any] | None = None
) -> tuple[list[Any], pb.Tree | None]:
    """Cotangents as sent: one per output leaf, and their ``cotangent_tree`` when they
    nest (a dict or nested sequences: matched with the output's structure by the server);
    ``convert`` makes leaves of non-tensors (default: as :func:`call_inputs` would).

    >>> leaves, tree = cotangent_leaves({"y": torch.ones(1)})
    >>> len(leaves), tree.keys
    (1, ['y'])
    """
    items = _arguments(value)[1]
    if not any(_is_container(v) for v in items) and not isinstance(value, dict):
        return items, None
    try:
        convert = convert or leaf_converter(not torch_loaded())
        leaves, tree = flatten(value, what="cotangents", convert=convert)
    except StructureError as exc:
        raise TypeError(str(exc)) from None
    return leaves, tree.to_wire()


def output_tree(response: Any, count: int) -> Tree:
    """The output's structure from a response (``output_tree``, or from a server that
    predates it, ``tuple_output``)."""
    if response.HasField("output_tree"):
        tree = Tree.from_wire(response.output_tree, what="output_tree")
        if tree.num_leaves == count:
            return tree
        raise ValueError(
            f"output_tree: the server described {tree.num_leaves} output leaves but sent {count}"
        )
    return Tree.of_args(count) if response.tuple_output else Tree.leaf()


def example_point(inputs: Any, batched: bool) -> tuple[Any, ...]:
    """One point's arguments, to export a module or function with (the first of a batch).

    >>> example_point({"x": torch.ones(4, 2)}, batched=True)
    ({'x': tensor([1., 1.])},)
    """
    call = call_inputs(inputs)
    point = [t[0] if batched and t.ndim > 0 else t for t in call.leaves]
    return tuple(call.tree.unflatten(point))
