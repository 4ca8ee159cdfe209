"""``jacserve propagate`` and ``jacserve fisher``: first-order uncertainty propagation
and the Fisher information of a model, printed and written to ``-o``'s file (their
covariance files and labels: ``jacserve.cli._uncertainty``)."""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

import torch

from jacserve.cli import _gsa, _uncertainty
from jacserve.cli._common import (
    DTYPES,
    checked_model,
    flag_names,
    pack,
    print_line,
    read,
    save,
    summary,
)
from jacserve.cli._io import InputError
from jacserve.cli._results import flat
from jacserve.client import Client

__all__ = ["cmd_fisher", "cmd_propagate"]

_SHOWN = 20  # rows printed; -o FILE.json holds them all


def _varied(args: argparse.Namespace, names: list[str], inputs: list[torch.Tensor]) -> list[int]:
    """The positions of the differentiated inputs (``--wrt``, else every floating one)."""
    positions = _gsa.varied_positions(args.wrt, names, inputs)
    if not positions:
        raise InputError("--inputs holds no floating input to differentiate (name one with --wrt)")
    return positions


def _shown(count: int) -> range:
    """The indices of the rows printed of ``count``."""
    return range(min(count, _SHOWN))


def cmd_propagate(client: Client, args: argparse.Namespace) -> None:
    """``jacserve propagate``: the output covariance from the varied inputs' covariance
    (first order)."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    positions = _varied(args, names, inputs)
    labels = _gsa.element_labels(names, inputs, positions)
    inputs_named = flag_names(args.input_names, len(labels), labels) or labels
    covariance = _uncertainty.input_covariance(
        args.covariance, args.std, len(labels), "--covariance", DTYPES[args.dtype]
    )
    result = client.propagate_uncertainty(model, pack(inputs), covariance,
                                          wrt=positions if args.wrt else None,
                                          device=args.device)  # fmt: skip
    rows = result.std.shape[0]
    out_labels = _gsa.output_labels(result.output_names, rows)
    outputs_named = flag_names(args.output_names, rows, out_labels) or out_labels
    print_line(f"uncertainty propagation (first order): {len(labels)} varied input elements "
               f"({', '.join(inputs_named[:6])}{', …' if len(labels) > 6 else ''}) → {rows} "
               f"outputs; method: {result.method}")  # fmt: skip
    summary("output covariance", result.covariance, result.metrics)
    mean = flat(result.mean).detach().double().cpu().reshape(-1)
    std = result.std.detach().double().cpu()
    print_line("output: mean ± std (std / |mean|):")
    for i in _shown(rows):
        relative = f"{float(std[i] / mean[i].abs()):.3g}" if float(mean[i]) != 0 else "—"
        print_line(f"  {outputs_named[i]}: {float(mean[i]):.6g} ± {float(std[i]):.4g} ({relative})")
    if rows > _SHOWN:
        print_line(f"  … {rows - _SHOWN} more outputs (-o FILE.json holds them all)")
    extra = {"input_names": inputs_named, "output_names": outputs_named, "method": result.method}
    save(args, {"covariance": result.covariance, "std": result.std, "mean": result.mean,
                "input_covariance": covariance}, result.metrics,
         lambda: result.covariance, extra)  # fmt: skip


def cmd_fisher(client: Client, args: argparse.Namespace) -> None:
    """``jacserve fisher``: the Fisher information of the parameters (or ``--wrt`` inputs),
    its eigenvalues and the Cramér–Rao standard errors."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    positions = _gsa.varied_positions(args.wrt, names, inputs) if args.wrt else []
    if not (math.isfinite(args.noise_std) and args.noise_std > 0):
        raise InputError(f"--noise-std must be > 0 and finite; got {args.noise_std}")
    noise = (
        _uncertainty.read_matrix(args.noise_covariance, "--noise-covariance", DTYPES[args.dtype])
        if args.noise_covariance else None
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:  # printed below, as metrics warnings
        warnings.simplefilter("always", RuntimeWarning)
        result = client.fisher_information(
            model, pack(inputs), noise_std=args.noise_std, noise_covariance=noise,
            parameters=args.parameters, wrt=positions or None, device=args.device,
        )  # fmt: skip
    count = result.matrix.shape[0]
    labels = _uncertainty.fisher_labels(result.names, names, positions)
    labels = flag_names(args.labels, count, labels) or labels
    values, vectors = _uncertainty.eigenvectors(result.matrix)
    dominant = _uncertainty.dominant_elements(vectors, labels)
    noise_text = "noise covariance from a file" if noise is not None else (
        f"noise std {args.noise_std:g}")  # fmt: skip
    print_line(f"Fisher information: {count} × {count} over {count} "
               f"{'input' if positions else 'parameter'} elements ({noise_text})")  # fmt: skip
    _print_fisher(result, labels, values, vectors, dominant, positions, names, inputs)
    metrics_warnings = set(result.metrics.warnings)
    for warning in caught:
        if str(warning.message) not in metrics_warnings:
            print_line(f"warning: {warning.message}")
    slices = [{"name": s.name, "start": s.start, "stop": s.stop, "shape": list(s.shape)}
              for s in result.names]  # fmt: skip
    extra = {"labels": labels, "slices": slices, "invertible": result.invertible,
             "dominant": [label for label, _ in dominant]}  # fmt: skip
    save(args, {"matrix": result.matrix, "eigenvalues": result.eigenvalues,
                "standard_errors": result.standard_errors, "eigenvectors": vectors,
                "output": result.output}, result.metrics, lambda: result.matrix, extra)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_fisher_spectrum

        plot_fisher_spectrum(values, dominant, args.plot)
        print_line(f"plot: {args.plot}")


def _print_fisher(result: Any, labels: list[str], values: torch.Tensor, vectors: torch.Tensor,
                  dominant: list[tuple[str, float]], positions: list[int],
                  names: list[str], inputs: list[torch.Tensor]) -> None:  # fmt: skip
    """Print a Fisher information's slices, eigenvalues (naming the unidentifiable
    directions) and standard errors."""
    print_line("slices: " + "; ".join(
        f"{_uncertainty.slice_name(s, names, positions)} {list(s.shape)} "
        f"at {s.start}:{s.stop}" for s in result.names))  # fmt: skip
    summary("fisher information", result.matrix, result.metrics)
    largest = float(values[0]) if values.numel() else 0.0
    print_line("eigenvalues (largest first; ≈ 0: a direction the data cannot identify):")
    for k in _shown(values.numel()):
        value = float(values[k])
        line = f"  λ{k + 1} = {value:.4g}  mostly {dominant[k][0]} ({dominant[k][1]:+.3f})"
        if value <= 1e-12 * largest:
            order = vectors[:, k].abs().argsort(descending=True)[:3].tolist()
            line += " — unidentifiable: " + ", ".join(
                f"{labels[j]} {float(vectors[j, k]):+.3f}" for j in order
            )
        print_line(line)
    if values.numel() > _SHOWN:
        print_line(f"  … {values.numel() - _SHOWN} more (-o FILE.json holds them all)")
    if result.invertible and largest > 0 and float(values[-1]) > 0:
        print_line(f"condition number λ1/λ{values.numel()}: {largest / float(values[-1]):.3g}")
    print_line(f"invertible: {'yes' if result.invertible else 'no (standard errors are NaN)'}")
    at = (
        torch.cat([inputs[p].detach().double().reshape(-1) for p in positions])
        if positions
        else None
    )
    print_line(
        "standard errors (Cramér–Rao bound, √diag F⁻¹)"
        + (" and relative to the value:" if at is not None else ":")
    )
    errors = result.standard_errors.detach().double().cpu()
    for j in _shown(errors.numel()):
        line = f"  {labels[j]}: {float(errors[j]):.4g}"
        if at is not None and float(at[j]) != 0:
            line += f" ({float(errors[j] / at[j].abs()):.3g})"
        print_line(line)
    if errors.numel() > _SHOWN:
        print_line(f"  … {errors.numel() - _SHOWN} more (-o FILE.json holds them all)")
