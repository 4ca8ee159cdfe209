"""Pictures of results: a signed Jacobian heatmap, a ranked bar chart of gradients, a
spectrum, a global sensitivity study (ranked total-index bounds, eigenvalue decay), and
the eigenvalue spectrum of a Fisher information.

matplotlib is an optional extra (``pip install 'jacserve[plot]'``); it is imported on use,
and ``check_plot`` tells a command before it calls the server whether it can draw.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jacserve.cli._io import InputError, check_output

__all__ = [
    "EigenvalueSeries",
    "check_plot",
    "plot_eigenvalue_decay",
    "plot_fisher_spectrum",
    "plot_global_sensitivity",
    "plot_gradients",
    "plot_jacobian",
    "plot_spectrum",
]

MISSING = "--plot needs matplotlib: pip install 'jacserve[plot]' (or pip install matplotlib)"


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or ``InputError`` when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(MISSING) from None
    return plt


def check_plot(path: str | pathlib.Path, what: str = "--plot") -> pathlib.Path:
    """``path`` if a picture can be drawn there: matplotlib importable, a format it
    writes (by suffix), an existing folder; else ``InputError``.

    >>> check_plot("heatmap.png").name
    'heatmap.png'
    >>> try:
    ...     check_plot("heatmap.docx")
    ... except InputError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    --plot heatmap.docx: expected a .png, .avif, ... or .webp file; got .docx
    """
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes(), key=lambda f: (f != "png", f))
    return check_output(path, tuple(f".{f}" for f in formats), what)


def _ticks(axis_set, names: Sequence[str] | None, count: int, rotate: bool = False) -> None:
    if names and len(names) == count and count <= 40:
        axis_set(range(count), names, rotation=90 if rotate else 0, fontsize=8)


def plot_jacobian(
    jacobian: torch.Tensor,
    path: str | pathlib.Path,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    title: str = "Jacobian ∂output/∂input",
) -> None:
    """Draw ``jacobian`` (flattened to outputs × inputs) as a heatmap with a diverging
    colour map centred on zero, so that sign and size read at a glance.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "j.png"
    >>> plot_jacobian(torch.tensor([[1.0, -2.0], [0.5, 0.0]]), out, input_names=["a", "b"])
    >>> out.stat().st_size > 1000
    True
    """
    plt = _pyplot()
    matrix = jacobian.detach().double().cpu()
    if matrix.dim() != 2:
        matrix = matrix.reshape(-1, matrix.shape[-1] if matrix.dim() else 1)
    limit = float(matrix.abs().max()) or 1.0
    rows, cols = matrix.shape
    figure, axes = plt.subplots(figsize=(min(12, 3 + cols * 0.35), min(10, 2.5 + rows * 0.3)))
    image = axes.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    figure.colorbar(image, ax=axes, label="∂ output / ∂ input")
    axes.set_xlabel("input")
    axes.set_ylabel("output")
    _ticks(axes.set_xticks, input_names, cols, rotate=True)
    _ticks(axes.set_yticks, output_names, rows)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_gradients(
    gradients: Mapping[str, torch.Tensor],
    path: str | pathlib.Path,
    *,
    top: int = 20,
    title: str = "Largest sensitivities",
    xlabel: str = "gradient (red: positive, blue: negative)",
) -> None:
    """Draw the ``top`` entries of the gradients with the largest magnitude, ranked, as
    horizontal bars coloured by sign; each bar is labelled ``name[index]``.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "g.png"
    >>> plot_gradients({"w": torch.tensor([[0.5, -2.0]]), "b": torch.tensor([1.0])}, out)
    >>> out.stat().st_size > 1000
    True
    """
    plt = _pyplot()
    entries = []
    for name, tensor in gradients.items():
        flat = tensor.detach().double().cpu().reshape(-1)
        for index, value in enumerate(flat.tolist()):
            where = (
                list(torch.unravel_index(torch.tensor(index), tensor.shape)) if tensor.dim() else []
            )
            label = f"{name}[{', '.join(str(int(i)) for i in where)}]" if where else name
            entries.append((abs(value), value, label))
    entries = sorted(entries, reverse=True)[:top][::-1]
    figure, axes = plt.subplots(figsize=(8, 1.5 + 0.3 * len(entries)))
    axes.barh(
        [label for _, _, label in entries],
        [value for _, value, _ in entries],
        color=["#b2182b" if value > 0 else "#2166ac" for _, value, _ in entries],
    )
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_spectrum(
    values: torch.Tensor,
    input_directions: torch.Tensor,
    path: str | pathlib.Path,
    *,
    input_names: Sequence[str] | None = None,
    residuals: torch.Tensor | None = None,
) -> None:
    """Draw the singular values (log scale, with residuals when given) and the input
    directions of the largest three, component by component.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.png"
    >>> plot_spectrum(torch.tensor([3.0, 1.0]), torch.eye(2), out)
    >>> out.stat().st_size > 1000
    True
    """
    plt = _pyplot()
    values = values.detach().double().cpu()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ranks = range(1, values.numel() + 1)
    left.semilogy(ranks, values.tolist(), "o-", label="σᵢ")
    if residuals is not None:
        left.semilogy(
            ranks, residuals.double().clamp_min(1e-300).tolist(), "x:", label="residual / σ₁"
        )
        left.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("rank i")
    left.set_title("Singular values of the Jacobian")
    left.grid(alpha=0.3)
    directions = input_directions.detach().double().cpu()
    for i in range(min(3, directions.shape[0])):
        right.plot(directions[i].tolist(), marker="." if directions.shape[1] <= 60 else None,
                   label=f"v{i + 1} (σ = {float(values[i]):.3g})")  # fmt: skip
    right.axhline(0, color="black", linewidth=0.8)
    _ticks(right.set_xticks, input_names, directions.shape[1], rotate=True)
    right.set_xlabel("input element")
    right.set_title("Input directions that matter most")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass(frozen=True)
class EigenvalueSeries:
    """The eigenvalues of one output's active subspace (largest first) and their
    bootstrap interval, labelled for the legend."""

    label: str
    values: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def _bound_bars(
    axes: Any, bars: Sequence[tuple[str, float, float]], title: str, xlabel: str
) -> None:
    """Ranked horizontal bars (largest on top) with standard errors, and a line at 1."""
    bars = list(bars)[::-1]
    axes.barh([label for label, _, _ in bars], [value for _, value, _ in bars],
              xerr=[error for _, _, error in bars], color="#4575b4", ecolor="black",
              capsize=3)  # fmt: skip
    axes.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)


def _eigenvalue_decay(axes: Any, series: Sequence[EigenvalueSeries], scaled: bool) -> None:
    """Eigenvalues against their rank on a log scale, bootstrap intervals as error bars;
    ``scaled``: each output's divided by its largest, so that several share the axis."""
    from matplotlib.ticker import MaxNLocator

    for item in series:
        values, lower, upper = (
            t.detach().double().cpu() for t in (item.values, item.lower, item.upper)
        )
        scale = float(values[0]) if scaled and float(values[0]) > 0 else 1.0
        floor = max(float(values.abs().max()) / scale, 1e-300) * 1e-16
        values = (values / scale).clamp_min(floor)
        lower, upper = (torch.where(t.isnan(), values * scale, t) for t in (lower, upper))
        below = (values - (lower / scale).clamp_min(floor)).clamp_min(0)
        above = ((upper / scale).clamp_min(floor) - values).clamp_min(0)
        ranks = list(range(1, values.numel() + 1))
        axes.errorbar(ranks, values.tolist(), yerr=[below.tolist(), above.tolist()], marker="o",
                      capsize=3, label=item.label)  # fmt: skip
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("rank k")
    axes.set_ylabel("λₖ / λ₁" if scaled else "λₖ")
    axes.set_title("Active subspace: eigenvalues of E[∇y ∇yᵀ] (95% bootstrap)")
    axes.grid(alpha=0.3, which="both")
    if any(item.label for item in series):
        axes.legend(fontsize=7, ncol=2 if len(series) > 5 else 1)


def plot_global_sensitivity(
    bars: Sequence[tuple[str, float, float]],
    path: str | pathlib.Path,
    *,
    eigenvalues: Sequence[EigenvalueSeries] = (),
    scaled: bool = False,
    title: str = "Upper bounds on Sobol' total indices",
    xlabel: str = "total-index bound (DGSM), ± standard error",
) -> None:
    """Draw ``bars`` (label, total-index bound, standard error; largest first) as a
    ranked horizontal bar chart and, beside it when given, the eigenvalue decay of the
    active subspaces (log scale, bootstrap intervals as error bars; ``scaled``: each
    divided by its largest). The dotted line marks 1: a total index never exceeds it.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "gsa.png"
    >>> series = EigenvalueSeries("y", torch.tensor([4.0, 0.1]), torch.tensor([3.0, 0.05]),
    ...                           torch.tensor([5.0, 0.2]))
    >>> plot_global_sensitivity([("beta", 0.9, 0.05), ("I0", 0.02, 0.001)], out,
    ...                         eigenvalues=[series])
    >>> out.stat().st_size > 1000
    True
    """
    plt = _pyplot()
    panels = 2 if eigenvalues else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 + 5 * (panels - 1), 1.8 + 0.35 * len(bars)),
                                squeeze=False)  # fmt: skip
    figure.set_figheight(max(figure.get_figheight(), 4.0))
    _bound_bars(axes[0][0], bars, title, xlabel)
    if eigenvalues:
        _eigenvalue_decay(axes[0][1], eigenvalues, scaled)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_eigenvalue_decay(
    eigenvalues: Sequence[EigenvalueSeries], path: str | pathlib.Path, *, scaled: bool = False
) -> None:
    """Draw the eigenvalue decay of active subspaces alone (as the second panel of
    :func:`plot_global_sensitivity`).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "eig.png"
    >>> series = EigenvalueSeries("", torch.tensor([4.0, 0.0]), torch.tensor([3.0, 0.0]),
    ...                           torch.tensor([5.0, 0.0]))
    >>> plot_eigenvalue_decay([series], out)
    >>> out.stat().st_size > 1000
    True
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    _eigenvalue_decay(axes, eigenvalues, scaled)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_fisher_spectrum(
    eigenvalues: torch.Tensor,
    dominant: Sequence[tuple[str, float]],
    path: str | pathlib.Path,
    *,
    title: str = "Fisher information: eigenvalue spectrum",
    relative: float = 1e-12,
) -> None:
    """Draw the eigenvalues of a Fisher information (largest first) on a log scale, each
    labelled by the dominant element of its eigenvector (``dominant``: label and
    weight). Eigenvalues at most ``relative`` × the largest (directions the data cannot
    identify) are drawn as red crosses below a dashed line at that threshold.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "fisher.png"
    >>> plot_fisher_spectrum(torch.tensor([28.0, 1.5, 0.0]),
    ...                      [("c", 0.9), ("a", 0.7), ("b", 0.8)], out)
    >>> out.stat().st_size > 1000
    True
    """
    plt = _pyplot()
    values = eigenvalues.detach().double().cpu()
    largest = max(float(values.max()), 1e-300) if values.numel() else 1.0
    threshold = relative * largest
    floor = threshold * 1e-2
    ranks = list(range(1, values.numel() + 1))
    shown = values.clamp_min(floor).tolist()
    singular = [float(v) <= threshold for v in values.tolist()]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.5 + 0.55 * len(ranks)), 4.5))
    axes.semilogy(ranks, shown, "-", color="#999999", linewidth=1)
    for rank, value, zero in zip(ranks, shown, singular, strict=True):
        axes.semilogy([rank], [value], "x" if zero else "o", color="#d73027" if zero else "#4575b4",
                      markersize=9 if zero else 7)  # fmt: skip
    for rank, value, (label, weight), zero in zip(ranks, shown, dominant, singular, strict=True):
        text = f"{label} ({weight:+.2f})" + (" ≈ 0" if zero else "")
        axes.annotate(text, (rank, value), textcoords="offset points", xytext=(4, 6),
                      fontsize=8, rotation=30 if len(ranks) > 8 else 0)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0.5, len(ranks) + 0.5 + 0.15 * len(ranks))
    bottom, top = axes.get_ylim()
    bottom = min(bottom, min(shown, default=1.0) / 3)
    if any(singular):
        axes.axhline(threshold, color="#d73027", linestyle="--", linewidth=1,
                     label=f"{relative:g} × λ₁: below it, not identifiable")  # fmt: skip
        axes.legend(fontsize=8, loc="lower left")
        bottom = floor / 10
    axes.set_ylim(bottom, top * 10)
    axes.set_xlabel("rank k (label: the eigenvector's dominant element and its weight)")
    axes.set_ylabel("eigenvalue λₖ of F")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="major")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
