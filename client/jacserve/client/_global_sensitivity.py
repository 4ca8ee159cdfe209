"""Requests and results of derivative-based global sensitivity (shared by both clients):
the laws of the varied inputs, ``GlobalSensitivity`` calls and their results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jacserve.client._analysis import _with_inputs
from jacserve.client._calls import MODES, Prepared
from jacserve.client._results import DerivativeMetrics, Tensor
from jacserve.client._structure import call_inputs, example_point
from jacserve.codec import decode_tensor, encode_tensor
from jacserve.pytree import Tree
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = [
    "ActiveSubspace",
    "GlobalSensitivityResult",
    "Normal",
    "Uniform",
    "prepare_global_sensitivity",
]


@dataclass(frozen=True)
class Uniform:
    """Each element of a varied input uniform on ``[low, high)``: tensors, arrays or
    numbers shaped like the input (or broadcasting to its shape).

    >>> Uniform(-3.14, 3.14).to_wire().WhichOneof("law")
    'uniform'
    """

    low: Any
    high: Any

    def to_wire(self) -> pb.Distribution:
        """The ``jacserve.v1.Distribution`` message."""
        law = pb.UniformLaw(low=encode_tensor(self.low), high=encode_tensor(self.high))
        return pb.Distribution(uniform=law)


@dataclass(frozen=True)
class Normal:
    """Each element of a varied input normal with mean ``mean`` and standard deviation
    ``std`` (> 0), shaped like the input (or broadcasting to its shape).

    >>> Normal(0.0, 1.0).to_wire().normal.std.dtype == Normal(0.0, 1.0).to_wire().normal.mean.dtype
    True
    """

    mean: Any
    std: Any

    def to_wire(self) -> pb.Distribution:
        """The ``jacserve.v1.Distribution`` message."""
        return pb.Distribution(
            normal=pb.NormalLaw(mean=encode_tensor(self.mean), std=encode_tensor(self.std))
        )


@dataclass(frozen=True)
class ActiveSubspace:
    """The eigenpairs of C = E[∇y ∇yᵀ] for one output: ``eigenvalues`` ``[N]`` (largest
    first), ``eigenvectors`` ``[N, N]`` (column k goes with eigenvalue k), and their
    95 % bootstrap interval ``eigenvalue_lower``/``eigenvalue_upper`` ``[N]``."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    eigenvalue_lower: Tensor
    eigenvalue_upper: Tensor


@dataclass(frozen=True)
class GlobalSensitivityResult:
    """Global sensitivity over the varied inputs' laws, float64, M outputs by N varied
    input elements (``output_names`` and ``input_names``, each flattened in order):

    - ``dgsm`` ``[M, N]``: ν_ij = E[(∂y_i/∂x_j)²], with ``dgsm_std_error``;
    - ``total_index_bound`` ``[M, N]``: an upper bound on Sobol's total-effect index
      of x_j for y_i ((b−a)²ν/(π² Var y_i) for a uniform x_j, σ²ν/Var y_i for a normal
      one): an input whose bound is small does not matter over the whole range;
    - ``output_mean``, ``output_variance`` ``[M]`` over the design;
    - ``active_subspace``: one :class:`ActiveSubspace` per output (empty when too many
      gradients to keep; ``metrics.warnings`` says so);
    - ``samples``: the design points evaluated.
    """

    dgsm: Tensor
    dgsm_std_error: Tensor
    total_index_bound: Tensor
    output_mean: Tensor
    output_variance: Tensor
    active_subspace: tuple[ActiveSubspace, ...]
    samples: int
    metrics: DerivativeMetrics
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


def prepare_global_sensitivity(
    inputs: Any,
    distribution: Uniform | Normal | Sequence[Uniform | Normal],
    *,
    wrt: Sequence[int] | None = None,
    samples: int = 1024,
    seed: int = 0,
    bootstrap: int = 100,
    mode: str = "auto",
    device: str = "",
) -> Prepared[GlobalSensitivityResult]:
    """A ``GlobalSensitivity`` call (arguments as
    :meth:`jacserve.client.Client.global_sensitivity`).

    >>> prepared = prepare_global_sensitivity([1.0, 2.0], Uniform(0.0, 1.0), wrt=[0])
    >>> prepared.rpc, prepared.request.samples, len(prepared.request.distributions)
    ('GlobalSensitivity', 1024, 1)
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected 'auto', 'forward' or 'reverse'; got {mode!r}")
    if isinstance(distribution, Uniform | Normal):
        distribution = [distribution]
    laws = list(distribution)
    if not all(isinstance(law, Uniform | Normal) for law in laws):
        raise TypeError("distribution: expected Uniform(low, high) or Normal(mean, std), or a list")
    if samples < 2:
        raise ValueError(f"samples must be >= 2; got {samples}")
    call = call_inputs(inputs, wrt)
    if len(laws) != len(call.wrt):
        raise ValueError(
            f"distribution: expected one law per varied input ({len(call.wrt)}: "
            f"{', '.join(call.input_names)}); got {len(laws)}"
        )
    request = _with_inputs(
        pb.GlobalSensitivityRequest(
            distributions=[law.to_wire() for law in laws],
            samples=samples,
            seed=seed,
            bootstrap=bootstrap if bootstrap > 0 else -1,
            mode=MODES[mode],
            options=pb.ComputeOptions(device=device),
        ),
        call,
    )

    def parse(response: pb.GlobalSensitivityResponse) -> GlobalSensitivityResult:
        output_names = (
            tuple(Tree.from_wire(response.output_tree, what="output_tree").leaf_names())
            if response.HasField("output_tree")
            else ("",)
        )

        def decode(message: pb.Tensor, name: str) -> Any:
            return decode_tensor(message, name=name, numpy=call.numpy)

        return GlobalSensitivityResult(
            dgsm=decode(response.dgsm, "dgsm"),
            dgsm_std_error=decode(response.dgsm_std_error, "dgsm_std_error"),
            total_index_bound=decode(response.total_index_bound, "total_index_bound"),
            output_mean=decode(response.output_mean, "output_mean"),
            output_variance=decode(response.output_variance, "output_variance"),
            active_subspace=tuple(
                ActiveSubspace(
                    decode(s.eigenvalues, "eigenvalues"),
                    decode(s.eigenvectors, "eigenvectors"),
                    decode(s.eigenvalue_lower, "eigenvalue_lower"),
                    decode(s.eigenvalue_upper, "eigenvalue_upper"),
                )
                for s in response.active_subspaces
            ),
            samples=response.samples,
            metrics=DerivativeMetrics.from_wire(response.metrics),
            input_names=call.input_names,
            output_names=output_names,
        )

    return Prepared("GlobalSensitivity", request, parse, example_point(inputs, batched=False))
