"""Requests and results of the analysis calls: sensitivity summaries, top singular
triplets and sparse Jacobians (shared by both clients, like ``_calls``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from jacserve.client._calls import MODES, Prepared
from jacserve.client._results import DerivativeMetrics, JacobianResult, Tensor
from jacserve.client._structure import CallInputs, call_inputs, example_point, output_tree
from jacserve.codec import decode_tensor, decode_tensors, encode_tensors, is_torch_tensor
from jacserve.v1 import jacobian_service_pb2 as pb

R = TypeVar("R")


def _with_inputs(request: R, call: CallInputs) -> R:
    """``request`` with the inputs, ``wrt`` and ``input_tree`` of ``call``."""
    encode_tensors(call.leaves, name="inputs", into=request.inputs)  # type: ignore[attr-defined]
    request.wrt.extend(call.wire_wrt)  # type: ignore[attr-defined]
    if call.wire_tree is not None:
        request.input_tree.CopyFrom(call.wire_tree)  # type: ignore[attr-defined]
    return request


def _outputs(response: Any, numpy: bool) -> tuple[Any, tuple[str, ...]]:
    """The structured output and its leaves' names (the M axis of flattened results)."""
    tensors = decode_tensors(response.outputs, numpy=numpy)
    tree = output_tree(response, len(tensors))
    return tree.unflatten(list(tensors)), tuple(tree.leaf_names())


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else ""


__all__ = [
    "RankedInput",
    "SensitivityResult",
    "SingularResult",
    "prepare_sensitivity",
    "prepare_sparse_jacobian",
    "prepare_top_singular",
]


@dataclass(frozen=True)
class RankedInput:
    """An input element that matters: ``input`` (argument position; with nested inputs
    the leaf's position among all input tensors), ``element`` (flat index in it),
    ``score`` (the norm of its elasticities over all outputs) and ``name`` (the leaf's
    path, ``"0"`` or ``"0.x"``: see NOTE: [Leaf names] in :mod:`jacserve.pytree`)."""

    input: int
    element: int
    score: float
    name: str = ""


@dataclass(frozen=True)
class SensitivityResult:
    """A summary of the Jacobian: ``elasticities`` ``[M, N]`` (``(x_j / y_i)·∂y_i/∂x_j``,
    float64, NaN where ``y_i = 0``), norms per input element (``[N]``: raw Jacobian
    columns and elasticity columns) and per output element (``[M]``), and the
    ``top_inputs`` by elasticity, largest first. The M axis runs over the output's leaves
    (``output_names``), the N axis over the differentiated input leaves
    (``input_names``), each flattened and concatenated in that order."""

    output: Any
    elasticities: Tensor
    input_norms: Tensor
    input_elasticity_norms: Tensor
    output_norms: Tensor
    output_elasticity_norms: Tensor
    top_inputs: tuple[RankedInput, ...]
    metrics: DerivativeMetrics
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class SingularResult:
    """The top singular triplets of the Jacobian, ``J ≈ Σ σᵢ uᵢ vᵢᵀ``: ``values``
    ``[k]`` (largest first), ``input_directions`` ``[k, N]`` (vᵢ: the input
    perturbations that matter most), ``output_directions`` ``[k, M]`` (uᵢ: the
    responses), ``residuals`` ``[k]`` (``max(‖J·v − σu‖, ‖Jᵀ·u − σv‖) / σ₁``), the
    Lanczos ``steps`` taken, and ``converged``: every residual within the server's
    tolerance (when not, the values are approximate and a ``RuntimeWarning`` says so).
    N and M run over ``input_names`` and ``output_names`` as in :class:`SensitivityResult`."""

    output: Any
    values: Tensor
    input_directions: Tensor
    output_directions: Tensor
    residuals: Tensor
    steps: int
    metrics: DerivativeMetrics
    converged: bool = True
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()


def prepare_sensitivity(
    inputs: Any, *, wrt: Sequence[int] | None = None, mode: str = "auto", top_k: int = 10,
    device: str = "",
) -> Prepared[SensitivityResult]:  # fmt: skip
    """A ``Sensitivity`` call (arguments as :meth:`jacserve.client.Client.sensitivity`).

    >>> prepare_sensitivity(torch.ones(2), top_k=3).request.top_k
    3
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected 'auto', 'forward' or 'reverse'; got {mode!r}")
    call = call_inputs(inputs, wrt)
    request = _with_inputs(
        pb.SensitivityRequest(
            mode=MODES[mode], top_k=top_k, options=pb.ComputeOptions(device=device)
        ),
        call,
    )

    def parse(response: pb.SensitivityResponse) -> SensitivityResult:
        output, output_names = _outputs(response, call.numpy)
        leaf_names = call.tree.leaf_names()

        def decode(message: Any, name: str) -> Any:
            return decode_tensor(message, name=name, numpy=call.numpy)

        return SensitivityResult(
            output=output,
            elasticities=decode(response.elasticities, "elasticities"),
            input_norms=decode(response.input_norms, "input_norms"),
            input_elasticity_norms=decode(response.input_elasticity_norms, "norms"),
            output_norms=decode(response.output_norms, "output_norms"),
            output_elasticity_norms=decode(response.output_elasticity_norms, "norms"),
            top_inputs=tuple(
                RankedInput(r.input, r.element, r.score, _name(leaf_names, r.input))
                for r in response.top_inputs
            ),
            metrics=DerivativeMetrics.from_wire(response.metrics),
            input_names=call.input_names,
            output_names=output_names,
        )

    return Prepared("Sensitivity", request, parse, example_point(inputs, batched=False))


def prepare_top_singular(
    inputs: Any, k: int, *, wrt: Sequence[int] | None = None, steps: int = 0, device: str = "",
) -> Prepared[SingularResult]:  # fmt: skip
    """A ``TopSingular`` call (arguments as :meth:`jacserve.client.Client.top_singular`).

    >>> prepare_top_singular(torch.ones(4), 2).rpc
    'TopSingular'
    """
    call = call_inputs(inputs, wrt)
    request = _with_inputs(
        pb.TopSingularRequest(k=k, steps=steps, options=pb.ComputeOptions(device=device)), call
    )

    def parse(response: pb.TopSingularResponse) -> SingularResult:
        if not response.converged:
            warnings.warn(
                f"top_singular did not converge after {response.steps} Lanczos steps: the "
                "values are approximate (see .residuals; ask for more steps)",
                RuntimeWarning,
                stacklevel=4,
            )
        output, output_names = _outputs(response, call.numpy)

        def decode(message: Any, name: str) -> Any:
            return decode_tensor(message, name=name, numpy=call.numpy)

        return SingularResult(
            output=output,
            values=decode(response.values, "values"),
            input_directions=decode(response.input_directions, "input_directions"),
            output_directions=decode(response.output_directions, "output_directions"),
            residuals=decode(response.residuals, "residuals"),
            steps=response.steps,
            metrics=DerivativeMetrics.from_wire(response.metrics),
            converged=response.converged,
            input_names=call.input_names,
            output_names=output_names,
        )

    return Prepared("TopSingular", request, parse, example_point(inputs, batched=False))


def sparsity_pattern(sparsity: Any) -> pb.SparsityPattern | None:
    """The wire pattern of ``sparsity``: ``"detect"``/``True`` (``None``: the server
    probes), a dense ``[M, N]`` mask (tensor or NumPy array) or a sparse tensor (its
    nonzeros), or ``(rows, cols)`` index sequences.

    >>> sparsity_pattern(torch.eye(2)).row_indices
    [0, 1]
    """
    if sparsity is True or (isinstance(sparsity, str) and sparsity == "detect"):
        return None
    if isinstance(sparsity, np.ndarray):
        if sparsity.ndim != 2:
            raise ValueError(f"sparsity: a mask must be [M, N]; got shape {list(sparsity.shape)}")
        rows, cols = np.nonzero(sparsity)
        return pb.SparsityPattern(
            rows=sparsity.shape[0], cols=sparsity.shape[1],
            row_indices=rows.tolist(), col_indices=cols.tolist(),
        )  # fmt: skip
    if is_torch_tensor(sparsity):
        if sparsity.dim() != 2:
            raise ValueError(f"sparsity: a mask must be [M, N]; got shape {list(sparsity.shape)}")
        dense = sparsity.to_dense() if sparsity.is_sparse else sparsity
        rows, cols = dense.nonzero(as_tuple=True)
        return pb.SparsityPattern(
            rows=dense.shape[0], cols=dense.shape[1],
            row_indices=rows.tolist(), col_indices=cols.tolist(),
        )  # fmt: skip
    if isinstance(sparsity, tuple | list) and len(sparsity) == 2:
        rows, cols = (np.asarray(p, dtype=np.int64).reshape(-1) for p in sparsity)
        return pb.SparsityPattern(row_indices=rows.tolist(), col_indices=cols.tolist())
    raise ValueError(
        "sparsity: expected 'detect', a [M, N] mask or sparse tensor, or (rows, cols) indices"
    )


def prepare_sparse_jacobian(
    inputs: Any, sparsity: Any, *, wrt: Sequence[int] | None = None, mode: str = "auto",
    probes: int = 0, device: str = "",
) -> Prepared[JacobianResult]:  # fmt: skip
    """A ``SparseJacobian`` call (``Client.jacobian(..., sparsity=...)``).

    >>> prepare_sparse_jacobian(torch.ones(2), torch.eye(2)).request.pattern.col_indices
    [0, 1]
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected 'auto', 'forward' or 'reverse'; got {mode!r}")
    call = call_inputs(inputs, wrt)
    request = _with_inputs(
        pb.SparseJacobianRequest(
            mode=MODES[mode], probes=probes, options=pb.ComputeOptions(device=device)
        ),
        call,
    )
    pattern = sparsity_pattern(sparsity)
    if pattern is not None:
        request.pattern.CopyFrom(pattern)

    def parse(response: pb.SparseJacobianResponse) -> JacobianResult:
        rows = decode_tensor(response.row_indices, name="row_indices", numpy=call.numpy)
        cols = decode_tensor(response.col_indices, name="col_indices", numpy=call.numpy)
        values = decode_tensor(response.values, name="values", numpy=call.numpy)
        shape = (response.rows, response.cols)
        return JacobianResult(
            output=_outputs(response, call.numpy)[0],
            jacobian=_sparse_matrix(rows, cols, values, shape, call.numpy),
            metrics=DerivativeMetrics.from_wire(response.metrics),
        )

    return Prepared("SparseJacobian", request, parse, example_point(inputs, batched=False))


def _sparse_matrix(rows: Any, cols: Any, values: Any, shape: tuple[int, int], numpy: bool) -> Any:
    """A ``torch.sparse_coo_tensor``, or on the NumPy path a ``scipy.sparse.coo_array``."""
    if numpy:
        try:
            from scipy.sparse import coo_array
        except ImportError:
            raise ImportError(
                "a sparse Jacobian of NumPy inputs is a scipy.sparse.coo_array: install scipy "
                "(or pass torch tensors to get a torch.sparse_coo_tensor)"
            ) from None
        for name, index, bound in (("row", rows, shape[0]), ("col", cols, shape[1])):
            if index.size and (index.min() < 0 or index.max() >= bound):  # from the network
                raise ValueError(f"sparse Jacobian: {name} index out of range [0, {bound})")
        return coo_array((values, (rows, cols)), shape=shape)
    import torch

    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, shape, is_coalesced=True,
        check_invariants=True,  # indices from the network: checked before use
    )  # fmt: skip
