"""Preparing a model method for torch.func: checked inputs, fresh copies, tuple outputs.

NOTE: [TorchScript executor]
TorchScript's profiling executor re-optimizes a loaded module after its first calls, and
forward-mode derivatives through the re-optimized graph come back wrong with no error
from the second call on (PyTorch issue 84681; measured here: off by 0.42 on a
Linear+Tanh model). :func:`safe_execution` turns executor optimization off. The setting
is per thread, so every engine entry point enters it on the calling thread.

NOTE: [Input copies]
A model may modify its inputs in place. Calls into the model get clones of the inputs,
made inside the transformed function so that the clones are themselves traced by
torch.func; the caller's tensors are never written. Inside vmap a clone copies the whole
batch of tangents (n × n in forward mode: half the time of a 1000-input Jacobian), so
:meth:`BoundMethod.observe` runs the plain forward evaluation on clones and watches
their version counters, which every in-place op bumps: when the model wrote none of its
inputs, the derivative passes of that request (same inputs, so the same code path) run
without copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from jacserve.server.errors import (
    InvalidArgument,
    JacserveError,
    ModelExecutionError,
    Reason,
    ResourceExhausted,
)

__all__ = [
    "DERIVATIVE_HINT",
    "BoundMethod",
    "Outputs",
    "check_like",
    "is_allocation_failure",
    "numel",
    "resolve_wrt",
    "safe_execution",
    "summarize_error",
    "to_output_tuple",
    "user_code",
]

Outputs = tuple[torch.Tensor, ...]
_MAX_ERROR_CHARS = 500
_CALL_HINT = "Check the number, shapes and dtypes of the inputs against the model"
DERIVATIVE_HINT = (
    "An op in the model may have no derivative formula; try the other mode, or rewrite it"
)


@contextlib.contextmanager
def safe_execution() -> Iterator[None]:
    """Run TorchScript without executor optimization. See NOTE: [TorchScript executor].

    >>> with safe_execution():
    ...     pass
    """
    with torch.jit.optimized_execution(False):
        yield


def summarize_error(exc: BaseException) -> str:
    """One line of what went wrong: for TorchScript errors the cause (their last line).

    >>> summarize_error(ValueError("ValueError: bad shape\\nmore detail"))
    'bad shape'
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # TorchScript errors put a traceback of the scripted code first and the cause last.
    text = lines[-1] if "TorchScript interpreter" in str(exc) else lines[0]
    return text.removeprefix(f"{type(exc).__name__}: ").rstrip(".")[:_MAX_ERROR_CHARS]


_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "std::bad_alloc")


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed (torch's CPU/CUDA allocators, or Python).

    >>> is_allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    True
    """
    return isinstance(exc, MemoryError) or any(s in str(exc) for s in _ALLOCATION_FAILURES)


@contextlib.contextmanager
def user_code(what: str, hint: str = _CALL_HINT) -> Iterator[None]:
    """Turn any non-jacserve exception raised in the block into a :class:`ModelExecutionError`.

    Args:
        what: the action, for the message (for example ``"calling method 'forward'"``).
        hint: what the caller can do about it.

    >>> with user_code("calling method 'forward'"):  # doctest: +IGNORE_EXCEPTION_DETAIL
    ...     raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x4 and 3x4)")
    Traceback (most recent call last):
    ModelExecutionError: calling method 'forward' raised RuntimeError: mat1 and mat2 ...
    """
    try:
        yield
    except JacserveError:
        raise
    except Exception as exc:
        if is_allocation_failure(exc):
            raise ResourceExhausted(
                f"{what} ran out of memory ({summarize_error(exc)}); the worker's memory is capped "
                "(--worker-memory-bytes). Use smaller inputs or a memory budget "
                "(options.max_memory_bytes)",
                reason=Reason.OUT_OF_MEMORY,
            ) from exc
        raise ModelExecutionError(
            f"{what} raised {type(exc).__name__}: {summarize_error(exc)}. {hint}"
        ) from exc


def numel(tensors: Sequence[torch.Tensor]) -> int:
    """Total number of elements of a sequence of tensors.

    >>> numel([torch.zeros(2, 3), torch.zeros(())])
    7
    """
    return sum(t.numel() for t in tensors)


def resolve_wrt(inputs: Sequence[torch.Tensor], wrt: Sequence[int] | None) -> tuple[int, ...]:
    """Validate ``wrt`` against ``inputs``; ``None`` or empty means every floating input.

    Raises:
        InvalidArgument: an index out of range or repeated, a non-floating input, or no
            floating input at all.

    >>> resolve_wrt([torch.zeros(2), torch.zeros(2, dtype=torch.int64)], None)
    (0,)
    """
    if not wrt:
        chosen = tuple(i for i, t in enumerate(inputs) if t.is_floating_point())
        if not chosen:
            dtypes = ", ".join(str(t.dtype).removeprefix("torch.") for t in inputs) or "none"
            raise InvalidArgument(
                f"expected at least one floating-point input to differentiate; got dtypes [{dtypes}]"
            )
        return chosen
    chosen = tuple(int(i) for i in wrt)
    if len(set(chosen)) != len(chosen):
        raise InvalidArgument(f"wrt must not repeat an input index; got {list(chosen)}")
    for i in chosen:
        if not 0 <= i < len(inputs):
            raise InvalidArgument(
                f"wrt index {i} is out of range for {len(inputs)} inputs (valid: 0..{len(inputs) - 1})"
            )
        if not inputs[i].is_floating_point():
            raise InvalidArgument(
                f"input {i} has dtype {str(inputs[i].dtype).removeprefix('torch.')} and cannot be "
                "differentiated; leave it out of wrt (it is still passed to the model)"
            )
    return chosen


def check_like(
    kind: str, values: Sequence[torch.Tensor], references: Sequence[torch.Tensor], of: str
) -> None:
    """Check that ``values`` match ``references`` in count, shape and dtype.

    Args:
        kind: what the values are, for messages (``"tangents"``).
        values: the tensors to check.
        references: what each must look like.
        of: what the references are, for messages (``"differentiated input"``).

    Raises:
        InvalidArgument: naming the first mismatch.

    >>> check_like("tangents", [torch.zeros(3)], [torch.zeros(2)], "differentiated input")
    Traceback (most recent call last):
    ...
    jacserve.server.errors.InvalidArgument: tangents[0]: expected shape [2] and dtype float32 like differentiated input 0; got shape [3] and dtype float32
    """
    if len(values) != len(references):
        raise InvalidArgument(
            f"expected {len(references)} {kind} (one per {of}); got {len(values)}"
        )
    for i, (value, ref) in enumerate(zip(values, references, strict=True)):
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise InvalidArgument(
                f"{kind}[{i}]: expected shape {list(ref.shape)} and dtype "
                f"{str(ref.dtype).removeprefix('torch.')} like {of} {i}; got shape "
                f"{list(value.shape)} and dtype {str(value.dtype).removeprefix('torch.')}"
            )


def to_output_tuple(result: Any, method: str) -> tuple[Outputs, bool]:
    """Normalize a method's return value to a tuple of tensors and whether it was a tuple.

    Raises:
        InvalidArgument: when the method returns something other than tensors.

    >>> to_output_tuple(torch.zeros(1), "forward")[1]
    False
    """
    is_tuple = isinstance(result, tuple | list)
    outputs = tuple(result) if is_tuple else (result,)
    for i, out in enumerate(outputs):
        if not isinstance(out, torch.Tensor):
            raise InvalidArgument(
                f"method {method!r} must return a tensor or a tuple of tensors; "
                f"output {i} is a {type(out).__name__}"
            )
    return outputs, is_tuple


class BoundMethod:
    """``g(*diff_inputs) -> tuple of outputs``, the other inputs held fixed.

    Calls pass the model clones of every input unless :meth:`observe` found that it
    writes none (see NOTE: [Input copies]), and record in :attr:`tuple_output` whether
    the method returned a tuple.

    >>> g = BoundMethod(lambda a, b: a * b, [torch.ones(2), torch.full((2,), 3.0)], [1], "f")
    >>> g(torch.full((2,), 2.0)), g.tuple_output
    ((tensor([2., 2.]),), False)
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[torch.Tensor],
        wrt: Sequence[int],
        method: str,
    ) -> None:
        self._fn = fn
        self._inputs = tuple(inputs)
        self._wrt = tuple(wrt)
        self.method = method
        self.tuple_output = False
        self.copies_inputs = True

    def _args(self, diff_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        args = list(self._inputs)
        for position, value in zip(self._wrt, diff_inputs, strict=True):
            args[position] = value
        return [a.clone() for a in args] if self.copies_inputs else args

    def __call__(self, *diff_inputs: torch.Tensor) -> Outputs:
        outputs, self.tuple_output = to_output_tuple(
            self._fn(*self._args(diff_inputs)), self.method
        )
        return outputs

    def observe(self, *diff_inputs: torch.Tensor) -> Outputs:
        """Call on fresh copies and stop copying later if the model wrote none of them.

        >>> g = BoundMethod(torch.sin, [torch.zeros(2)], [0], "f")
        >>> _ = g.observe(torch.zeros(2))
        >>> g.copies_inputs
        False
        """
        self.copies_inputs = True
        args = self._args(diff_inputs)
        versions = [a._version for a in args]
        outputs, self.tuple_output = to_output_tuple(self._fn(*args), self.method)
        self.copies_inputs = any(a._version != v for a, v in zip(args, versions, strict=True))
        return outputs
