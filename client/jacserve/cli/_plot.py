"""Pictures of results: a signed Jacobian heatmap and a ranked bar chart of gradients.

matplotlib is an optional extra (``pip install 'jacserve[plot]'``); it is imported on use,
and ``check_plot`` tells a command before it calls the server whether it can draw.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from jacserve.cli._io import InputError, check_output

__all__ = ["check_plot", "plot_gradients", "plot_jacobian", "plot_spectrum"]

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


def check_plot(path: str | pathlib.Path) -> pathlib.Path:
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
    return check_output(path, tuple(f".{f}" for f in formats), "--plot")


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
