"""Typed results of the client's calls, laid out like torch.autograd.functional.

Their arrays are torch tensors, or NumPy arrays on the NumPy path (see
:func:`jacserve.client._structure.call_inputs`): the type annotations say ``Tensor``
for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from jacserve.codec import dtype_from_wire, numpy_dtype_from_wire, torch_loaded
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = [
    "DerivativeMetrics",
    "GradientsResult",
    "InputInfo",
    "JacobianResult",
    "JvpResult",
    "MethodInfo",
    "ModelInfo",
    "ParameterInfo",
    "TensorOrTuple",
    "VjpResult",
]

if TYPE_CHECKING:
    import numpy as np
    import torch

    Tensor = Union[torch.Tensor, np.ndarray]  # noqa: UP007
else:
    Tensor = Any  # torch is optional: see NOTE: [Torch is optional here] in jacserve.codec

TensorOrTuple = Union[Tensor, tuple[Tensor, ...]]  # noqa: UP007 (runtime alias)
Jacobian = Union[Tensor, tuple[Tensor, ...], tuple[tuple[Tensor, ...], ...]]  # noqa: UP007


def _dtype(value: int) -> Any:
    """A wire dtype as a ``torch.dtype`` once torch is imported, else a ``numpy.dtype``
    (bfloat16, which NumPy lacks, as the string ``"bfloat16"``)."""
    if torch_loaded():
        return dtype_from_wire(value)
    if value == pb.DTYPE_BFLOAT16:
        return "bfloat16"
    return numpy_dtype_from_wire(value)


_MODES = {pb.DERIVATIVE_MODE_FORWARD: "forward", pb.DERIVATIVE_MODE_REVERSE: "reverse"}
_FORMATS = {
    pb.MODEL_FORMAT_TORCHSCRIPT: "torchscript",
    pb.MODEL_FORMAT_TORCH_EXPORT: "torch_export",
}


@dataclass(frozen=True)
class FiniteDifferenceCheck:
    """The answer checked against float64 central finite differences (``verify=``):
    ``relative_errors`` per direction (‖fd − ad‖ / max(‖fd‖, ‖ad‖)), their maximum,
    the ``precision`` the model ran in for it, and the step ``h``. Errors of 1e-7 or less
    are agreement; 1e-3 or more mean a derivative rule is wrong (or the function is not
    smooth at this point)."""

    relative_errors: tuple[float, ...]
    max_relative_error: float
    precision: str
    step: float


@dataclass(frozen=True)
class DerivativeMetrics:
    """How the server computed a derivative: mode and why, passes, time per phase, memory.

    ``timing`` maps ``decode``, ``load``, ``plan``, ``forward``, ``derivative``,
    ``encode`` and ``total`` to seconds measured on the server (``plan`` is the one-off
    measurement of per-pass costs and memory on a model's first use at a signature).
    ``chunks``/``chunk_size`` say how the passes were split under a memory budget;
    ``estimated_forward_seconds``/``estimated_reverse_seconds`` are auto mode's measured
    estimates (0 when it did not measure). ``execution_path`` is ``"eager"`` or
    ``"compiled"``; ``compilation`` says where building a compiled program stands.
    ``verification`` is the finite-difference check asked for with ``verify=``, else
    ``None``. ``threads`` is the number of intra-op threads the server computed with.
    ``checkpoint_segments`` is how many segments checkpointed reverse mode cut the
    program into to fit a memory budget (0: none), and ``recompute_seconds`` what
    recomputing them cost.
    """

    mode: str
    mode_reason: str
    input_size: int
    output_size: int
    passes: int
    vectorized: bool
    fallback_reason: str
    timing: dict[str, float]
    peak_memory_bytes: int
    memory_method: str
    nonfinite_count: int
    warnings: tuple[str, ...]
    device: str
    chunks: int
    chunk_size: int
    batch_size: int
    estimated_forward_seconds: float
    estimated_reverse_seconds: float
    memory_budget_bytes: int
    estimated_peak_bytes: int
    execution_path: str
    compilation: str
    verification: FiniteDifferenceCheck | None = None
    threads: int = 0
    checkpoint_segments: int = 0
    recompute_seconds: float = 0.0

    @classmethod
    def from_wire(cls, m: pb.DerivativeMetrics) -> DerivativeMetrics:
        """Build from a ``jacserve.v1.DerivativeMetrics`` message."""
        t = m.timing
        return cls(
            mode=_MODES.get(m.mode, "unspecified"),
            mode_reason=m.mode_reason,
            input_size=m.input_size,
            output_size=m.output_size,
            passes=m.passes,
            vectorized=m.vectorized,
            fallback_reason=m.fallback_reason,
            timing={
                "decode": t.decode_seconds,
                "load": t.load_seconds,
                "plan": t.plan_seconds,
                "forward": t.forward_seconds,
                "derivative": t.derivative_seconds,
                "encode": t.encode_seconds,
                "total": t.total_seconds,
            },
            peak_memory_bytes=m.peak_memory_bytes,
            memory_method=m.memory_method,
            nonfinite_count=m.nonfinite_count,
            warnings=tuple(m.warnings),
            device=m.device,
            chunks=m.chunks,
            chunk_size=m.chunk_size,
            batch_size=m.batch_size,
            estimated_forward_seconds=m.estimated_forward_seconds,
            estimated_reverse_seconds=m.estimated_reverse_seconds,
            memory_budget_bytes=m.memory_budget_bytes,
            estimated_peak_bytes=m.estimated_peak_bytes,
            execution_path=m.execution_path,
            compilation=m.compilation,
            threads=m.threads,
            checkpoint_segments=m.checkpoint_segments,
            recompute_seconds=m.recompute_seconds,
            verification=(
                FiniteDifferenceCheck(
                    tuple(m.verification.relative_errors),
                    m.verification.max_relative_error,
                    m.verification.precision,
                    m.verification.step,
                )
                if m.HasField("verification")
                else None
            ),
        )


@dataclass(frozen=True)
class JvpResult:
    """``output`` and ``jvp`` (J·v), each a tensor or a tuple like the model's output."""

    output: TensorOrTuple
    jvp: TensorOrTuple
    metrics: DerivativeMetrics


@dataclass(frozen=True)
class VjpResult:
    """``output`` and ``vjp`` (uᵀ·J): a tensor for a single primal, else one per ``wrt`` input."""

    output: TensorOrTuple
    vjp: TensorOrTuple
    metrics: DerivativeMetrics


@dataclass(frozen=True)
class HvpResult:
    """``output`` (the scalar) and ``hvp``: ``H·v`` (or ``Jᵀ·J·v`` with Gauss–Newton),
    a tensor for a single input, else one per ``wrt`` input; a leading k when batched."""

    output: TensorOrTuple
    hvp: TensorOrTuple
    metrics: DerivativeMetrics


@dataclass(frozen=True)
class HessianResult:
    """``output`` (the scalar) and ``hessian``, structured as
    ``torch.autograd.functional.hessian``: a tensor of shape ``x.shape + x.shape`` for a
    single input, else a tuple of tuples ``[j][k]``."""

    output: TensorOrTuple
    hessian: Jacobian
    metrics: DerivativeMetrics


@dataclass(frozen=True)
class JacobianResult:
    """``output`` and ``jacobian``, structured as ``torch.autograd.functional.jacobian``.

    A tensor when both the inputs and the output are single tensors; a tuple when one of
    them is a tuple; a tuple of tuples ``[output][input]`` when both are. Each block has
    shape ``output.shape + input.shape``. Nested outputs and inputs (dicts, lists) nest
    the same way, as ``torch.func.jacrev`` does: the output's structure with each leaf
    replaced by the blocks over the inputs (``jacobian["logits"][0]``); ``output`` keeps
    the method's structure. ``shards`` reports the windows of passes when
    the Jacobian was split across servers (``Client`` with several targets), else ``()``.
    """

    output: TensorOrTuple
    jacobian: Jacobian
    metrics: DerivativeMetrics
    shards: tuple[Any, ...] = ()


@dataclass(frozen=True)
class GradientsResult:
    """``output`` and ``gradients``: parameter name → gradient tensor."""

    output: TensorOrTuple
    gradients: dict[str, Tensor]
    metrics: DerivativeMetrics


@dataclass(frozen=True)
class InputInfo:
    """A method input; ``dtype``/``shape`` are ``None`` where the archive does not record
    them, which a TorchScript archive never does (a torch.export one does for each tensor
    input). A dtype is a ``torch.dtype`` once torch is imported, else a ``numpy.dtype``
    (or ``"bfloat16"``). ``type`` is the declared type as the archive spells it (the
    TorchScript type, such as ``"Tensor"`` or ``"Tuple[Tensor, Tensor]"``; ``"Tensor"``
    for a tensor input of a torch.export archive), ``""`` where unknown."""

    name: str
    dtype: Any
    shape: tuple[int, ...] | None
    type: str = ""

    @property
    def dtype_known(self) -> bool:
        """Whether the archive records this input's element type."""
        return self.dtype is not None

    @property
    def shape_known(self) -> bool:
        """Whether the archive records this input's shape."""
        return self.shape is not None


@dataclass(frozen=True)
class MethodInfo:
    """A callable method of a model."""

    name: str
    inputs: tuple[InputInfo, ...]


@dataclass(frozen=True)
class ParameterInfo:
    """A named parameter of a model."""

    name: str
    shape: tuple[int, ...]
    dtype: Any  # as InputInfo.dtype


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of an uploaded model."""

    model_id: str
    format: str
    archive_size_bytes: int
    methods: tuple[MethodInfo, ...]
    parameters: tuple[ParameterInfo, ...]

    @classmethod
    def from_wire(cls, m: pb.ModelInfo) -> ModelInfo:
        """Build from a ``jacserve.v1.ModelInfo`` message."""
        return cls(
            model_id=m.model_id,
            format=_FORMATS.get(m.format, "unspecified"),
            archive_size_bytes=m.archive_size_bytes,
            methods=tuple(
                MethodInfo(
                    name=method.name,
                    inputs=tuple(
                        InputInfo(
                            name=i.name,
                            dtype=_dtype(i.dtype) if i.dtype else None,
                            shape=tuple(i.shape) if i.has_shape else None,
                            type=i.type,
                        )
                        for i in method.inputs
                    ),
                )
                for method in m.methods
            ),
            parameters=tuple(
                ParameterInfo(p.name, tuple(p.shape), _dtype(p.dtype)) for p in m.parameters
            ),
        )
