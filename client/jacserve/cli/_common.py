"""What every client command shares: its model argument and input files (checked before
any call to the server), the printed summary of a result, and ``-o``'s file.

A file or usage error raises ``jacserve.cli._io.InputError`` (exit 2, see
``jacserve.cli._run``).

>>> pack([torch.ones(1)]).shape, len(pack([torch.ones(1), torch.ones(2)]))
(torch.Size([1]), 2)
>>> flag_names("a, b", 2, []), flag_names(None, 2, ["x", "y"]), flag_names(None, 3, ["x", "y"])
(['a', 'b'], ['x', 'y'], None)
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import torch

from jacserve.cli._io import InputError, read_tensors, readable_file, write_results

__all__ = [
    "DTYPES",
    "checked_archive",
    "checked_model",
    "flag_names",
    "pack",
    "print_line",
    "print_verification",
    "read",
    "save",
    "summary",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
_MODEL_ID = re.compile(r"[0-9a-f]{64}")


def print_line(text: str = "") -> None:
    """Write ``text`` and a newline to stdout."""
    sys.stdout.write(text + "\n")


def checked_archive(path: str, what: str) -> str:
    """``path`` if it is a readable zip file (what torch.jit.save and torch.export.save
    write), else ``InputError``."""
    checked = readable_file(path, what)
    if not zipfile.is_zipfile(checked):
        raise InputError(
            f"{what} {path}: not a model archive (a zip file written by torch.jit.save or "
            "torch.export.save)"
        )
    return str(checked)


def checked_model(args: argparse.Namespace) -> str:
    """The model argument: an archive file (checked) or a model id (64 hex digits)."""
    if _MODEL_ID.fullmatch(args.model) and not pathlib.Path(args.model).exists():
        return args.model
    if not pathlib.Path(args.model).exists():
        raise InputError(
            f"model {args.model}: no such file, and not a model id (the 64 hex digits "
            "'jacserve upload' prints)"
        )
    return checked_archive(args.model, "model")


def read(args: argparse.Namespace, flag: str) -> tuple[list[str], list[torch.Tensor]]:
    """The tensors of the file given to ``--FLAG``."""
    return read_tensors(getattr(args, flag), dtype=DTYPES[args.dtype], what=f"--{flag}")


def pack(tensors: list[torch.Tensor]) -> Any:
    """One tensor as itself, several as a tuple (the model's positional inputs)."""
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def flag_names(flag: str | None, count: int, fallback: list[str]) -> list[str] | None:
    """The comma-separated names of ``flag`` (``InputError`` unless ``count`` of them);
    without it ``fallback`` when that names all ``count`` entries, else ``None``."""
    if flag:
        given = [n.strip() for n in flag.split(",")]
        if len(given) != count:
            raise InputError(f"{len(given)} names given for {count} entries: {flag}")
        return given
    return fallback if len(fallback) == count and all(fallback) else None


def save(
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
        print_line(f"written: {args.output}")


def summary(kind: str, tensor: torch.Tensor, metrics: Any) -> None:
    """Print a result's shape, dtype and norm, then the call's mode, passes, timing,
    warnings and finite-difference check."""
    print_line(f"{kind}: shape {list(tensor.shape)}, dtype "
               f"{str(tensor.dtype).removeprefix('torch.')}, "
               f"norm {float(tensor.double().norm()):.6g}")  # fmt: skip
    print_line(f"mode: {metrics.mode} ({metrics.mode_reason}); passes: {metrics.passes}")
    timing = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in metrics.timing.items() if v)
    print_line(f"time: {timing}")
    for warning in metrics.warnings:
        print_line(f"warning: {warning}")
    print_verification(metrics)


def print_verification(metrics: Any) -> None:
    """Print the finite-difference check of a call, when it made one."""
    check = metrics.verification
    if check is not None:
        print_line(f"finite-difference check ({check.precision}, "
                   f"{len(check.relative_errors)} directions): max relative error "
                   f"{check.max_relative_error:.2e}")  # fmt: skip
