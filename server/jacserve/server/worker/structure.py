"""Models whose inputs or outputs are pytrees: the engine sees flat tensors either way.

A request may say how its input tensors nest into the method's arguments
(``input_tree``) and, for a VJP or parameter gradients, how its cotangents nest
(``cotangent_tree``). :func:`bind` then wraps the method in a :class:`Structured`
function that takes the leaves, rebuilds the arguments, calls the model and returns the
output's leaves as a tuple, remembering the output's :class:`~jacserve.pytree.Tree` for
the response. ``wrt``, tangents and the Jacobian's blocks all index leaves. A method whose
output is a tensor or a tuple of tensors, called with tensors, is left unwrapped (and
may be served by a compiled program); a wrapped one never is, since a compiled program
does not see the structure.

>>> fn = Structured(lambda d: {"y": d["x"] * 2}, "forward", Tree("tuple", (
...     Tree("dict", (Tree.leaf(),), ("x",)),)), None)
>>> fn(torch.ones(1)), fn.output_tree.describe()
((tensor([2.]),), "{'y': *}")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from jacserve.pytree import StructureError, Tree, flatten
from jacserve.server.errors import InvalidArgument
from jacserve.server.registry import LoadedModel, MethodInfo
from jacserve.server.registry.archive import ArchiveFormat

__all__ = ["Structured", "bind", "check_inputs", "label", "output_fields", "verification_wrap"]


class Structured:
    """``fn`` called with flat leaves, returning its output's leaves as a tuple.

    Args:
        fn: the model's method.
        method: its name, for messages.
        args_tree: how the leaves nest into the positional arguments (a tuple); ``None``
            passes each leaf as one argument.
        like: the cotangents' structure, which the output must have (its dicts are then
            flattened in ``like``'s key order); ``None`` for none.
    """

    def __init__(
        self, fn: Callable[..., Any], method: str, args_tree: Tree | None, like: Tree | None
    ) -> None:
        self._fn = fn
        self.method = method
        self.args_tree = args_tree
        self.like = like
        self.output_tree: Tree | None = None

    def __call__(self, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = self.args_tree.unflatten(leaves) if self.args_tree is not None else leaves
        result = self._fn(*args)
        what = f"the output of method {self.method!r}"
        try:
            outputs, tree = flatten(result, what=what)
            if self.like is not None:
                outputs, tree = flatten(result, what=what, like=self.like)
        except StructureError as exc:
            if self.like is None or "expected" not in str(exc):
                raise InvalidArgument(str(exc)) from None
            raise InvalidArgument(
                f"cotangents: expected the structure of {what}, {tree.describe()}, "
                f"dicts matched by key; got {self.like.describe()} ({exc})"
            ) from None
        self.output_tree = tree
        if not outputs:
            raise InvalidArgument(f"method {self.method!r} returned no tensor")
        return tuple(outputs)

    def rebind(self, fn: Callable[..., Any]) -> Structured:
        """The same structure around another callable (a float64 copy of the model)."""
        return Structured(fn, self.method, self.args_tree, self.like)


def _tree(request: Any, field: str, what: str) -> Tree | None:
    if field not in request.DESCRIPTOR.fields_by_name or not request.HasField(field):
        return None
    try:
        return Tree.from_wire(getattr(request, field), what=what)
    except StructureError as exc:
        raise InvalidArgument(str(exc)) from None


def plain_output(model: LoadedModel, method: str) -> bool:
    """Whether the method is known, from its archive, to return a tensor or a tuple of
    tensors (a torch.export program's output spec; a TorchScript method's return type).

    >>> import io
    >>> from jacserve.server.registry.loading import load_model
    >>> buffer = io.BytesIO()
    >>> torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), buffer)
    >>> plain_output(load_model(buffer.getvalue(), ArchiveFormat.TORCHSCRIPT), "forward")
    True
    """
    module = model.module
    if model.format is ArchiveFormat.TORCH_EXPORT:
        spec = getattr(module, "_out_spec", None)
        if spec is None:
            return False
        if spec.is_leaf():
            return True
        return spec.type is tuple and all(c.is_leaf() for c in spec.children_specs)
    try:
        returns = getattr(module, method).schema.returns
    except (AttributeError, RuntimeError):
        return False
    if len(returns) != 1:
        return False
    kind = returns[0].type
    if isinstance(kind, torch.TensorType):
        return True
    return isinstance(kind, torch.TupleType) and all(
        isinstance(e, torch.TensorType) for e in kind.elements()
    )


def bind(
    model: LoadedModel, fn: Callable[..., Any], method: MethodInfo, request: Any, leaves: int
) -> Callable[..., Any]:
    """``fn`` as the engine should call it for ``request`` (whose inputs are ``leaves``
    tensors): wrapped in :class:`Structured` when the inputs, the cotangents or the
    output are not plain.

    Raises:
        InvalidArgument: a malformed tree, an input tree that is not a tuple of the
            arguments or whose leaves are not the request's tensors.
    """
    args_tree = _tree(request, "input_tree", "input_tree")
    if args_tree is not None:
        if args_tree.kind != "tuple":
            raise InvalidArgument(
                "input_tree: expected a TUPLE of the method's positional arguments; got "
                f"{args_tree.kind.upper()}"
            )
        if args_tree.num_leaves != leaves:
            raise InvalidArgument(
                f"input_tree: expected as many leaves as input tensors ({leaves}); it has "
                f"{args_tree.num_leaves}: {args_tree.describe()}"
            )
        if args_tree.is_plain():
            args_tree = None
    like = _tree(request, "cotangent_tree", "cotangent_tree")
    if like is not None and like.is_plain():
        like = None
    if args_tree is None and like is None and plain_output(model, method.name):
        return fn
    return Structured(fn, method.name, args_tree, like)


def check_inputs(
    model: LoadedModel,
    method: MethodInfo,
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    *,
    batched: bool = False,
) -> None:
    """:meth:`LoadedModel.check_inputs` on the arguments: for nested inputs of a
    TorchScript method their number (the types are checked by the call); for a
    torch.export program, which checks its inputs itself, nothing more.

    Raises:
        InvalidArgument: the wrong number of arguments.
    """
    args_tree = fn.args_tree if isinstance(fn, Structured) else None
    if args_tree is None:
        model.check_inputs(method, inputs, batched=batched)
        return
    if model.format is ArchiveFormat.TORCH_EXPORT:
        return
    count = len(args_tree.children)
    required = sum(1 for i in method.inputs if i.required)
    if not required <= count <= len(method.inputs):
        names = ", ".join(i.name for i in method.inputs)
        raise InvalidArgument(
            f"method {method.name!r} takes {len(method.inputs)} arguments ({names}); "
            f"input_tree has {count}: {args_tree.describe()}"
        )


def label(fn: Callable[..., Any], method: MethodInfo) -> str:
    """The method's name for the engine: with the structure of nested inputs, so that
    what the engine remembers per method and signature is kept apart per structure.

    >>> label(torch.sin, MethodInfo("forward", ()))
    'forward'
    """
    if not isinstance(fn, Structured):
        return method.name
    text = method.name + (fn.args_tree.describe() if fn.args_tree is not None else "")
    return text + (f" -> {fn.like.describe()}" if fn.like is not None else "")


def output_fields(fn: Callable[..., Any], outputs: int, tuple_output: bool) -> dict[str, Any]:
    """The response's ``tuple_output`` and ``output_tree`` for a result of ``outputs``
    tensors.

    >>> output_fields(torch.sin, 1, False)["tuple_output"]
    False
    """
    tree = fn.output_tree if isinstance(fn, Structured) else None
    if tree is None or tree.num_leaves != outputs:
        tree = Tree.of_args(outputs) if tuple_output else Tree.leaf()
    return {"tuple_output": tree.kind != "tensor", "output_tree": tree.to_wire()}


def verification_wrap(
    fn: Callable[..., Any],
) -> Callable[[Callable[..., Any]], Callable[..., Any]] | None:
    """What the finite-difference check wraps the model's copy in, to call it like ``fn``.

    >>> verification_wrap(torch.sin) is None
    True
    """
    return fn.rebind if isinstance(fn, Structured) else None
