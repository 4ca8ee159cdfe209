"""``jacserve gsa``: a global sensitivity study of a model's varied inputs, printed,
written to ``-o``'s file and plotted (the laws and ranking: ``jacserve.cli._gsa``)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from jacserve.cli import _gsa
from jacserve.cli._common import checked_model, flag_names, pack, print_line, read, save, summary
from jacserve.cli._io import InputError
from jacserve.client import Client, Normal, Uniform

__all__ = ["cmd_gsa"]


def _laws(args: argparse.Namespace, names: list[str], inputs: list[torch.Tensor],
          positions: list[int]) -> list[Any]:  # fmt: skip
    """One law per varied input, from ``--uniform``, ``--normal`` or ``--distribution``."""
    if args.distribution:
        return _gsa.read_laws(
            args.distribution,
            [names[p] for p in positions],
            [inputs[p].shape for p in positions],
        )
    first, second = (torch.tensor(v, dtype=torch.float64) for v in (args.uniform or args.normal))
    law = Uniform(first, second) if args.uniform else Normal(first, second)
    return [law] * len(positions)


def cmd_gsa(client: Client, args: argparse.Namespace) -> None:
    """``jacserve gsa``: total-index bounds (DGSM) and active subspaces of the varied inputs."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    positions = _gsa.varied_positions(args.wrt, names, inputs)
    if not positions:
        raise InputError("--inputs holds no floating input to vary (name one with --wrt)")
    laws = _laws(args, names, inputs, positions)
    if args.top < 1:
        raise InputError(f"--top must be >= 1; got {args.top}")
    result = client.global_sensitivity(
        model, pack(inputs), distribution=laws, wrt=positions if args.wrt else None,
        samples=args.samples, seed=args.seed, bootstrap=args.bootstrap, mode=args.mode,
        device=args.device,
    )  # fmt: skip
    rows, columns = result.total_index_bound.shape
    labels = _gsa.element_labels(names, inputs, positions)
    inputs_named = flag_names(args.input_names, columns, labels) or labels
    out_labels = _gsa.output_labels(result.output_names, rows)
    outputs_named = flag_names(args.output_names, rows, out_labels) or out_labels
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
    save(args, arrays, result.metrics, lambda: result.total_index_bound, extra)
    _plot_gsa(result, ranked, inputs_named, outputs_named, args)


def _print_gsa(result: Any, ranked: list[Any], inputs_named: list[str],
               outputs_named: list[str], args: argparse.Namespace) -> None:  # fmt: skip
    """Print a study's summary, its ranked inputs, and each output's mean, variance and
    leading active-subspace eigenvalues."""
    rows, columns = result.total_index_bound.shape
    print_line(f"global sensitivity: {result.samples} samples, {rows} outputs × {columns} "
               f"varied inputs")  # fmt: skip
    summary("total-index bounds", result.total_index_bound, result.metrics)
    where = (
        f"for {outputs_named[args.output_index]}" if args.output_index is not None
        else "the largest over outputs" if rows > 1 else f"for {outputs_named[0]}"
    )  # fmt: skip
    print_line(f"top {len(ranked)} inputs by total-index bound ({where}; Sobol' total index "
               f"<= bound):")  # fmt: skip
    for rank, item in enumerate(ranked, start=1):
        at = f" at {outputs_named[item.row]}" if rows > 1 and args.output_index is None else ""
        nu = float(result.dgsm[item.row, item.column])
        print_line(f"  {rank:>3}. {inputs_named[item.column]}: {item.bound:.4g} ± "
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
        print_line(line)
    if len(shown) > 20:
        print_line(f"  … {len(shown) - 20} more outputs (-o FILE.json holds them all)")
    if not result.active_subspace:
        print_line("active subspaces: none (see the warnings)")


def _plot_gsa(result: Any, ranked: list[Any], inputs_named: list[str],
              outputs_named: list[str], args: argparse.Namespace) -> None:  # fmt: skip
    """Draw ``--plot`` (the ranked bounds) and ``--plot-eigenvalues``, when asked."""
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
        print_line(f"plot: {args.plot}")
    if args.plot_eigenvalues:
        if not series:
            raise InputError("--plot-eigenvalues: the server returned no active subspaces")
        plot_eigenvalue_decay(series, args.plot_eigenvalues, scaled=scaled)
        print_line(f"plot: {args.plot_eigenvalues}")
