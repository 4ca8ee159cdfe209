"""The client commands of ``jacserve``: each a function of parsed flags and a client.

Every file a command reads is checked before it calls the server; a file or usage error
raises ``jacserve.cli._io.InputError`` (exit 2, see ``jacserve.cli._run``).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import torch

from jacserve.cli import _gsa, _uncertainty
from jacserve.cli._io import InputError, read_tensors, readable_file, write_results
from jacserve.cli._results import dense, first, flat, jacobian_array, matrix
from jacserve.client import Client

__all__ = ["COMMANDS"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_MODEL_ID = re.compile(r"[0-9a-f]{64}")


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _archive(path: str, what: str) -> str:
    """``path`` if it is a readable zip file (what torch.jit.save and torch.export.save
    write), else ``InputError``."""
    checked = readable_file(path, what)
    if not zipfile.is_zipfile(checked):
        raise InputError(
            f"{what} {path}: not a model archive (a zip file written by torch.jit.save or "
            "torch.export.save)"
        )
    return str(checked)


def _model(args: argparse.Namespace) -> str:
    """The model argument: an archive file (checked) or a model id (64 hex digits)."""
    if _MODEL_ID.fullmatch(args.model) and not pathlib.Path(args.model).exists():
        return args.model
    if not pathlib.Path(args.model).exists():
        raise InputError(
            f"model {args.model}: no such file, and not a model id (the 64 hex digits "
            "'jacserve upload' prints)"
        )
    return _archive(args.model, "model")


def _read(args: argparse.Namespace, flag: str) -> tuple[list[str], list[torch.Tensor]]:
    """The tensors of the file given to ``--FLAG``."""
    return read_tensors(getattr(args, flag), dtype=_DTYPES[args.dtype], what=f"--{flag}")


def _pack(tensors: list[torch.Tensor]) -> Any:
    """One tensor as itself, several as a tuple (the model's positional inputs)."""
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _save(
    args: argparse.Namespace,
    named: Mapping[str, Any],
    metrics: Any,
    primary: Callable[[], Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``-o``'s file, if asked: ``.npy`` gets ``primary()``, the rest every array
    (``.json`` also ``extra``)."""
    if args.output:
        write_results(args.output, named, metrics, primary=primary, extra=extra)
        _print(f"written: {args.output}")


def _summary(kind: str, tensor: torch.Tensor, metrics: Any) -> None:
    _print(f"{kind}: shape {list(tensor.shape)}, dtype {str(tensor.dtype).removeprefix('torch.')}, "
           f"norm {float(tensor.double().norm()):.6g}")  # fmt: skip
    _print(f"mode: {metrics.mode} ({metrics.mode_reason}); passes: {metrics.passes}")
    timing = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in metrics.timing.items() if v)
    _print(f"time: {timing}")
    for warning in metrics.warnings:
        _print(f"warning: {warning}")
    _print_verification(metrics)


def _print_verification(metrics: Any) -> None:
    check = metrics.verification
    if check is not None:
        _print(f"finite-difference check ({check.precision}, {len(check.relative_errors)} "
               f"directions): max relative error {check.max_relative_error:.2e}")  # fmt: skip


def cmd_upload(client: Client, args: argparse.Namespace) -> None:
    _print(client.upload(_archive(args.archive, "archive")))


def _input_signature(spec: Any) -> str:
    """One input as ``jacserve models show`` prints it: ``x: torch.float64[3]`` where the
    archive records dtype and shape, else its declared type and what it does not record
    (``x: Tensor (dtype and shape unknown)``, as for every TorchScript input)."""
    dtype = "" if spec.dtype is None else str(spec.dtype)
    shape = "" if spec.shape is None else str(list(spec.shape))
    unknown = " and ".join(
        what for what, known in (("dtype", dtype), ("shape", shape)) if not known
    )
    text = f"{spec.name}: {dtype or spec.type or 'any'}{shape}"
    return f"{text} ({unknown} unknown)" if unknown else text


def cmd_models(client: Client, args: argparse.Namespace) -> None:
    if args.action == "list":
        for info in client.list_models():
            methods = ", ".join(m.name for m in info.methods)
            _print(
                f"{info.model_id}  {info.format:<12}  {info.archive_size_bytes:>10} bytes  {methods}"
            )
        return
    if not args.model_id:
        raise InputError(f"'jacserve models {args.action}' needs a model id")
    if args.action == "delete":
        client.delete_model(args.model_id)
        _print(f"deleted {args.model_id}")
        return
    info = client.get_model(args.model_id)
    _print(f"model {info.model_id} ({info.format}, {info.archive_size_bytes} bytes)")
    for method in info.methods:
        signature = ", ".join(_input_signature(i) for i in method.inputs)
        _print(f"  {method.name}({signature})")
    for parameter in info.parameters:
        _print(f"  parameter {parameter.name}: {parameter.dtype}{list(parameter.shape)}")


def cmd_jvp(client: Client, args: argparse.Namespace) -> None:
    model, (_, primals) = _model(args), _read(args, "inputs")
    _, tangents = _read(args, "tangents")
    result = client.jvp(model, _pack(primals), _pack(tangents), device=args.device,
                        verify=args.verify)  # fmt: skip
    _summary("jvp", first(result.jvp), result.metrics)
    _save(args, {"jvp": result.jvp, "output": result.output}, result.metrics,
          lambda: flat(result.jvp))  # fmt: skip


def cmd_vjp(client: Client, args: argparse.Namespace) -> None:
    model, (_, primals) = _model(args), _read(args, "inputs")
    _, cotangents = _read(args, "cotangents")
    result = client.vjp(model, _pack(primals), _pack(cotangents), device=args.device,
                        verify=args.verify)  # fmt: skip
    _summary("vjp", first(result.vjp), result.metrics)
    _save(args, {"vjp": result.vjp, "output": result.output}, result.metrics,
          lambda: flat(result.vjp))  # fmt: skip


def _names(flag: str | None, count: int, fallback: list[str]) -> list[str] | None:
    if flag:
        names = [n.strip() for n in flag.split(",")]
        if len(names) != count:
            raise InputError(f"{len(names)} names given for {count} entries: {flag}")
        return names
    return fallback if len(fallback) == count and all(fallback) else None


def cmd_jacobian(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    if args.sparsity:
        _sparse_jacobian(client, args, model, inputs)
        return
    result = client.jacobian(
        model, _pack(inputs), mode=args.mode, device=args.device, shards=args.shards,
        verify=args.verify,
    )  # fmt: skip
    _summary("jacobian", first(result.jacobian), result.metrics)
    if result.shards:
        servers = len({s.target for s in result.shards})
        _print(f"split: {len(result.shards)} windows of passes over {servers} server(s)")
    _save(args, {"jacobian": result.jacobian, "output": result.output}, result.metrics,
          lambda: jacobian_array(result.output, result.jacobian))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        values = matrix(result.output, result.jacobian)
        input_names = _input_labels(names, inputs)
        plot_jacobian(
            values, args.plot,
            input_names=_names(args.input_names, values.shape[1], input_names),
            output_names=_names(args.output_names, values.shape[0], []),
        )  # fmt: skip
        _print(f"plot: {args.plot}")


def _sparsity(args: argparse.Namespace) -> Any:
    """``--sparsity``: ``"detect"``, or the mask its file holds."""
    if args.sparsity == "detect":
        return "detect"
    masks = read_tensors(args.sparsity, what="--sparsity")[1]
    if len(masks) != 1 or masks[0].dim() != 2:
        raise InputError(f"--sparsity {args.sparsity}: expected one [M, N] mask")
    return masks[0] != 0


def _sparse_jacobian(
    client: Client, args: argparse.Namespace, model: str, inputs: list[torch.Tensor]
) -> None:
    result = client.jacobian(model, _pack(inputs), mode=args.mode, device=args.device,
                             sparsity=_sparsity(args))  # fmt: skip
    sparse = result.jacobian
    _print(f"jacobian: sparse {list(sparse.shape)}, {sparse._nnz()} nonzeros, "
           f"{result.metrics.passes} passes (colours) instead of {min(sparse.shape)}")  # fmt: skip
    _summary("values", sparse.values(), result.metrics)
    indices = sparse.indices()
    _save(args, {"rows": indices[0], "cols": indices[1], "values": sparse.values(),
                 "shape": torch.tensor(sparse.shape)},
          result.metrics, lambda: dense(sparse))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        plot_jacobian(sparse.to_dense(), args.plot, title="Sparse Jacobian ∂output/∂input")
        _print(f"plot: {args.plot}")


def _input_labels(names: list[str], inputs: list[torch.Tensor]) -> list[str]:
    labels = []
    for name, tensor in zip(names, inputs, strict=True):
        count = tensor.numel()
        labels += [name] if count == 1 else [f"{name}[{i}]" for i in range(count)]
    return labels if all(names) else []


def cmd_grad(client: Client, args: argparse.Namespace) -> None:
    model, (_, inputs) = _model(args), _read(args, "inputs")
    cotangents = _pack(_read(args, "cotangents")[1]) if args.cotangents else None
    result = client.parameter_gradients(model, _pack(inputs), cotangents,
                                        device=args.device, verify=args.verify)  # fmt: skip
    _print(f"gradients of {len(result.gradients)} parameters:")
    for name, gradient in result.gradients.items():
        _print(
            f"  {name}: shape {list(gradient.shape)}, norm {float(gradient.double().norm()):.6g}"
        )
    _print(f"time: {result.metrics.timing.get('total', 0.0) * 1e3:.2f} ms")
    _print_verification(result.metrics)
    _save(args, {"grad": result.gradients, "output": result.output}, result.metrics,
          lambda: flat(list(result.gradients.values())))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_gradients

        plot_gradients(result.gradients, args.plot, top=args.top)
        _print(f"plot: {args.plot}")


def cmd_hessian(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    result = client.hessian(model, _pack(inputs), device=args.device)
    _summary("hessian", first(result.hessian), result.metrics)
    _save(args, {"hessian": result.hessian, "output": result.output}, result.metrics,
          lambda: jacobian_array(_pack(inputs), result.hessian))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        values = jacobian_array(_pack(inputs), result.hessian).reshape(
            sum(t.numel() for t in inputs), -1
        )
        labels = _names(args.input_names, values.shape[0], _input_labels(names, inputs))
        plot_jacobian(values, args.plot, input_names=labels, output_names=labels)
        _print(f"plot: {args.plot}")


def cmd_hvp(client: Client, args: argparse.Namespace) -> None:
    model, (_, inputs) = _model(args), _read(args, "inputs")
    _, vectors = _read(args, "vectors")
    result = client.hvp(model, _pack(inputs), _pack(vectors), device=args.device,
                        gauss_newton=args.gauss_newton)  # fmt: skip
    _summary("gnvp" if args.gauss_newton else "hvp", first(result.hvp), result.metrics)
    _save(args, {"hvp": result.hvp, "output": result.output}, result.metrics,
          lambda: flat(result.hvp))  # fmt: skip


def cmd_sensitivity(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    result = client.sensitivity(model, _pack(inputs), mode=args.mode, top_k=args.top,
                                device=args.device)  # fmt: skip
    labels = _element_labels(names, inputs)
    _summary("elasticities", result.elasticities, result.metrics)
    _print(
        f"top {len(result.top_inputs)} inputs by elasticity (relative change per relative change):"
    )
    for rank, item in enumerate(result.top_inputs, start=1):
        _print(f"  {rank:>3}. {labels[(item.input, item.element)]}: {item.score:.6g}")
    _save(args, {
        "elasticities": result.elasticities, "input_norms": result.input_norms,
        "input_elasticity_norms": result.input_elasticity_norms,
        "output_norms": result.output_norms, "output": result.output,
    }, result.metrics, lambda: result.elasticities)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_gradients

        scores = {labels[(r.input, r.element)]: torch.tensor(r.score) for r in result.top_inputs}
        plot_gradients(scores, args.plot, top=args.top, title="Most influential inputs",
                       xlabel="elasticity norm over all outputs")  # fmt: skip
        _print(f"plot: {args.plot}")


def _element_labels(names: list[str], inputs: list[torch.Tensor]) -> dict[tuple[int, int], str]:
    """``(input position, flat index)`` → ``name[index]`` (``input0[3]`` without names)."""
    labels = {}
    for position, tensor in enumerate(inputs):
        name = names[position] if position < len(names) and names[position] else f"input{position}"
        for element in range(tensor.numel()):
            labels[(position, element)] = name if tensor.numel() == 1 else f"{name}[{element}]"
    return labels


def cmd_spectrum(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    result = client.top_singular(model, _pack(inputs), args.k, steps=args.steps,
                                 device=args.device)  # fmt: skip
    _summary("singular values", result.values, result.metrics)
    for i, (value, residual) in enumerate(zip(result.values.tolist(), result.residuals.tolist(),
                                              strict=True), start=1):  # fmt: skip
        _print(f"  σ{i} = {value:.6g}  (residual {residual:.1e})")
    _save(args, {
        "values": result.values, "input_directions": result.input_directions,
        "output_directions": result.output_directions, "residuals": result.residuals,
    }, result.metrics, lambda: result.values)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_spectrum

        labels = list(_element_labels(names, inputs).values())
        plot_spectrum(result.values, result.input_directions, args.plot, input_names=labels,
                      residuals=result.residuals)  # fmt: skip
        _print(f"plot: {args.plot}")


def _laws(args: argparse.Namespace, names: list[str], inputs: list[torch.Tensor],
          positions: list[int]) -> list[Any]:  # fmt: skip
    """One law per varied input, from ``--uniform``, ``--normal`` or ``--distribution``."""
    from jacserve.client import Normal, Uniform

    if args.distribution:
        return _gsa.read_laws(
            args.distribution, [names[p] for p in positions], [inputs[p].shape for p in positions]
        )
    first, second = (torch.tensor(v, dtype=torch.float64) for v in (args.uniform or args.normal))
    law = Uniform(first, second) if args.uniform else Normal(first, second)
    return [law] * len(positions)


def cmd_gsa(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    positions = _gsa.varied_positions(args.wrt, names, inputs)
    if not positions:
        raise InputError("--inputs holds no floating input to vary (name one with --wrt)")
    laws = _laws(args, names, inputs, positions)
    if args.top < 1:
        raise InputError(f"--top must be >= 1; got {args.top}")
    result = client.global_sensitivity(
        model, _pack(inputs), distribution=laws, wrt=positions if args.wrt else None,
        samples=args.samples, seed=args.seed, bootstrap=args.bootstrap, mode=args.mode,
        device=args.device,
    )  # fmt: skip
    rows, columns = result.total_index_bound.shape
    labels = _gsa.element_labels(names, inputs, positions)
    inputs_named = _names(args.input_names, columns, labels) or labels
    out_labels = _gsa.output_labels(result.output_names, rows)
    outputs_named = _names(args.output_names, rows, out_labels) or out_labels
    if args.output_index is not None and not 0 <= args.output_index < rows:
        raise InputError(f"--output-index {args.output_index}: the model has {rows} outputs")
    ranked = _gsa.rank_inputs(result.total_index_bound, result.dgsm, result.dgsm_std_error,
                              args.output_index)[: args.top]  # fmt: skip
    _print_gsa(result, ranked, inputs_named, outputs_named, args)
    subspaces = result.active_subspace
    arrays: dict[str, Any] = {
        "total_index_bound": result.total_index_bound, "dgsm": result.dgsm,
        "dgsm_std_error": result.dgsm_std_error, "output_mean": result.output_mean,
        "output_variance": result.output_variance, "samples": torch.tensor(result.samples),
    }  # fmt: skip
    if subspaces:
        for key in ("eigenvalues", "eigenvectors", "eigenvalue_lower", "eigenvalue_upper"):
            arrays[key] = torch.stack([getattr(s, key) for s in subspaces])
    extra = {
        "input_names": inputs_named, "output_names": outputs_named,
        "ranking": [{"input": inputs_named[r.column], "bound": r.bound, "std_error": r.std_error,
                     "output": outputs_named[r.row]} for r in ranked],
    }  # fmt: skip
    _save(args, arrays, result.metrics, lambda: result.total_index_bound, extra)
    _plot_gsa(result, ranked, inputs_named, outputs_named, args)


def _print_gsa(result: Any, ranked: list[Any], inputs_named: list[str],
               outputs_named: list[str], args: argparse.Namespace) -> None:  # fmt: skip
    rows, columns = result.total_index_bound.shape
    _print(f"global sensitivity: {result.samples} samples, {rows} outputs × {columns} varied "
           f"inputs")  # fmt: skip
    _summary("total-index bounds", result.total_index_bound, result.metrics)
    where = (
        f"for {outputs_named[args.output_index]}" if args.output_index is not None
        else "the largest over outputs" if rows > 1 else f"for {outputs_named[0]}"
    )  # fmt: skip
    _print(f"top {len(ranked)} inputs by total-index bound ({where}; Sobol' total index <= "
           f"bound):")  # fmt: skip
    for rank, item in enumerate(ranked, start=1):
        at = f" at {outputs_named[item.row]}" if rows > 1 and args.output_index is None else ""
        nu = float(result.dgsm[item.row, item.column])
        _print(f"  {rank:>3}. {inputs_named[item.column]}: {item.bound:.4g} ± "
               f"{item.std_error:.2g}{at} (DGSM {nu:.4g})")  # fmt: skip
    shown = range(rows) if args.output_index is None else [args.output_index]
    for row in list(shown)[:20]:
        line = (f"  {outputs_named[row]}: mean {float(result.output_mean[row]):.4g}, variance "
                f"{float(result.output_variance[row]):.4g}")  # fmt: skip
        if row < len(result.active_subspace):
            subspace = result.active_subspace[row]
            values = subspace.eigenvalues.tolist()[:3]
            lower, upper = subspace.eigenvalue_lower.tolist(), subspace.eigenvalue_upper.tolist()
            text = ", ".join(
                f"{v:.3g}" + (f" [{lower[k]:.3g}, {upper[k]:.3g}]" if lower[k] == lower[k] else "")
                for k, v in enumerate(values)
            )
            direction = subspace.eigenvectors[:, 0].tolist()
            top = sorted(range(len(direction)), key=lambda j: -abs(direction[j]))[:3]
            line += f"; eigenvalues {text}; w1: " + ", ".join(
                f"{inputs_named[j]} {direction[j]:+.3f}" for j in top
            )
        _print(line)
    if len(shown) > 20:
        _print(f"  … {len(shown) - 20} more outputs (-o FILE.json holds them all)")
    if not result.active_subspace:
        _print("active subspaces: none (see the warnings)")


def _plot_gsa(result: Any, ranked: list[Any], inputs_named: list[str],
              outputs_named: list[str], args: argparse.Namespace) -> None:  # fmt: skip
    if not (args.plot or args.plot_eigenvalues):
        return
    from jacserve.cli._plot import EigenvalueSeries, plot_eigenvalue_decay, plot_global_sensitivity

    rows = range(len(result.active_subspace))
    if args.output_index is not None:
        rows = [args.output_index] if args.output_index < len(result.active_subspace) else []
    series = [
        EigenvalueSeries(outputs_named[k] if len(rows) > 1 else "",
                         *(getattr(result.active_subspace[k], key) for key in
                           ("eigenvalues", "eigenvalue_lower", "eigenvalue_upper")))
        for k in list(rows)[:10]
    ]  # fmt: skip
    scaled = len(series) > 1
    if args.plot:
        one = result.total_index_bound.shape[0] == 1 or args.output_index is not None
        title = ("Total-index bounds" + (f": {outputs_named[ranked[0].row]}" if one else
                 " (largest over outputs)")) if ranked else "Total-index bounds"  # fmt: skip
        plot_global_sensitivity(
            [(inputs_named[r.column], r.bound, r.std_error) for r in ranked], args.plot,
            eigenvalues=series, scaled=scaled, title=title,
        )  # fmt: skip
        _print(f"plot: {args.plot}")
    if args.plot_eigenvalues:
        if not series:
            raise InputError("--plot-eigenvalues: the server returned no active subspaces")
        plot_eigenvalue_decay(series, args.plot_eigenvalues, scaled=scaled)
        _print(f"plot: {args.plot_eigenvalues}")


def _varied(args: argparse.Namespace, names: list[str], inputs: list[torch.Tensor]) -> list[int]:
    """The positions of the differentiated inputs (``--wrt``, else every floating one)."""
    positions = _gsa.varied_positions(args.wrt, names, inputs)
    if not positions:
        raise InputError("--inputs holds no floating input to differentiate (name one with --wrt)")
    return positions


def _shown(count: int, limit: int = 20) -> range:
    return range(min(count, limit))


def cmd_propagate(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    positions = _varied(args, names, inputs)
    labels = _gsa.element_labels(names, inputs, positions)
    inputs_named = _names(args.input_names, len(labels), labels) or labels
    covariance = _uncertainty.input_covariance(
        args.covariance, args.std, len(labels), "--covariance", _DTYPES[args.dtype]
    )
    result = client.propagate_uncertainty(model, _pack(inputs), covariance,
                                          wrt=positions if args.wrt else None,
                                          device=args.device)  # fmt: skip
    rows = result.std.shape[0]
    out_labels = _gsa.output_labels(result.output_names, rows)
    outputs_named = _names(args.output_names, rows, out_labels) or out_labels
    _print(f"uncertainty propagation (first order): {len(labels)} varied input elements "
           f"({', '.join(inputs_named[:6])}{', …' if len(labels) > 6 else ''}) → {rows} "
           f"outputs; method: {result.method}")  # fmt: skip
    _summary("output covariance", result.covariance, result.metrics)
    mean = flat(result.mean).detach().double().cpu().reshape(-1)
    std = result.std.detach().double().cpu()
    _print("output: mean ± std (std / |mean|):")
    for i in _shown(rows):
        relative = f"{float(std[i] / mean[i].abs()):.3g}" if float(mean[i]) != 0 else "—"
        _print(f"  {outputs_named[i]}: {float(mean[i]):.6g} ± {float(std[i]):.4g} ({relative})")
    if rows > 20:
        _print(f"  … {rows - 20} more outputs (-o FILE.json holds them all)")
    extra = {"input_names": inputs_named, "output_names": outputs_named, "method": result.method}
    _save(args, {"covariance": result.covariance, "std": result.std, "mean": result.mean,
                 "input_covariance": covariance}, result.metrics,
          lambda: result.covariance, extra)  # fmt: skip


def cmd_fisher(client: Client, args: argparse.Namespace) -> None:
    model, (names, inputs) = _model(args), _read(args, "inputs")
    positions = _gsa.varied_positions(args.wrt, names, inputs) if args.wrt else []
    if not (math.isfinite(args.noise_std) and args.noise_std > 0):
        raise InputError(f"--noise-std must be > 0 and finite; got {args.noise_std}")
    noise = (
        _uncertainty.read_matrix(args.noise_covariance, "--noise-covariance", _DTYPES[args.dtype])
        if args.noise_covariance else None
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:  # printed below, as metrics warnings
        warnings.simplefilter("always", RuntimeWarning)
        result = client.fisher_information(
            model, _pack(inputs), noise_std=args.noise_std, noise_covariance=noise,
            parameters=args.parameters, wrt=positions or None, device=args.device,
        )  # fmt: skip
    count = result.matrix.shape[0]
    labels = _uncertainty.fisher_labels(result.names, names, positions)
    labels = _names(args.labels, count, labels) or labels
    values, vectors = _uncertainty.eigenvectors(result.matrix)
    dominant = _uncertainty.dominant_elements(vectors, labels)
    noise_text = "noise covariance from a file" if noise is not None else (
        f"noise std {args.noise_std:g}")  # fmt: skip
    _print(f"Fisher information: {count} × {count} over {count} "
           f"{'input' if positions else 'parameter'} elements ({noise_text})")  # fmt: skip
    _print_fisher(result, labels, values, vectors, dominant, positions, names, inputs)
    metrics_warnings = set(result.metrics.warnings)
    for warning in caught:
        if str(warning.message) not in metrics_warnings:
            _print(f"warning: {warning.message}")
    slices = [{"name": s.name, "start": s.start, "stop": s.stop, "shape": list(s.shape)}
              for s in result.names]  # fmt: skip
    extra = {"labels": labels, "slices": slices, "invertible": result.invertible,
             "dominant": [label for label, _ in dominant]}  # fmt: skip
    _save(args, {"matrix": result.matrix, "eigenvalues": result.eigenvalues,
                 "standard_errors": result.standard_errors, "eigenvectors": vectors,
                 "output": result.output}, result.metrics, lambda: result.matrix, extra)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_fisher_spectrum

        plot_fisher_spectrum(values, dominant, args.plot)
        _print(f"plot: {args.plot}")


def _print_fisher(result: Any, labels: list[str], values: torch.Tensor, vectors: torch.Tensor,
                  dominant: list[tuple[str, float]], positions: list[int], names: list[str],
                  inputs: list[torch.Tensor]) -> None:  # fmt: skip
    _print("slices: " + "; ".join(
        f"{_uncertainty.slice_name(s, names, positions)} {list(s.shape)} at {s.start}:{s.stop}"
        for s in result.names))  # fmt: skip
    _summary("fisher information", result.matrix, result.metrics)
    largest = float(values[0]) if values.numel() else 0.0
    _print("eigenvalues (largest first; ≈ 0: a direction the data cannot identify):")
    for k in _shown(values.numel()):
        value = float(values[k])
        line = f"  λ{k + 1} = {value:.4g}  mostly {dominant[k][0]} ({dominant[k][1]:+.3f})"
        if value <= 1e-12 * largest:
            order = vectors[:, k].abs().argsort(descending=True)[:3].tolist()
            line += " — unidentifiable: " + ", ".join(
                f"{labels[j]} {float(vectors[j, k]):+.3f}" for j in order
            )
        _print(line)
    if values.numel() > 20:
        _print(f"  … {values.numel() - 20} more (-o FILE.json holds them all)")
    if result.invertible and largest > 0 and float(values[-1]) > 0:
        _print(f"condition number λ1/λ{values.numel()}: {largest / float(values[-1]):.3g}")
    _print(f"invertible: {'yes' if result.invertible else 'no (standard errors are NaN)'}")
    at = (
        torch.cat([inputs[p].detach().double().reshape(-1) for p in positions])
        if positions
        else None
    )
    _print(
        "standard errors (Cramér–Rao bound, √diag F⁻¹)"
        + (" and relative to the value:" if at is not None else ":")
    )
    errors = result.standard_errors.detach().double().cpu()
    for j in _shown(errors.numel()):
        line = f"  {labels[j]}: {float(errors[j]):.4g}"
        if at is not None and float(at[j]) != 0:
            line += f" ({float(errors[j] / at[j].abs()):.3g})"
        _print(line)
    if errors.numel() > 20:
        _print(f"  … {errors.numel() - 20} more (-o FILE.json holds them all)")


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], None]] = {
    "upload": cmd_upload,
    "models": cmd_models,
    "jvp": cmd_jvp,
    "vjp": cmd_vjp,
    "jacobian": cmd_jacobian,
    "grad": cmd_grad,
    "hessian": cmd_hessian,
    "hvp": cmd_hvp,
    "sensitivity": cmd_sensitivity,
    "spectrum": cmd_spectrum,
    "gsa": cmd_gsa,
    "propagate": cmd_propagate,
    "fisher": cmd_fisher,
}
