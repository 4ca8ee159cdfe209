"""The client commands of ``jacserve``: each a function of parsed flags and a client."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from jacserve.cli._io import InputError, read_tensors, write_results
from jacserve.client import Client, DeadlineExceeded, JacserveError, Unavailable
from jacserve.client._connection import DEFAULT_TARGET

__all__ = ["COMMANDS", "add_client_commands", "run"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        help=f"server host:port, or several comma-separated replicas (env JACSERVE_TARGET; "
        f"default {DEFAULT_TARGET})",
    )
    parser.add_argument("--token", help="bearer token (env JACSERVE_TOKEN)")
    parser.add_argument(
        "--tls-ca", metavar="PEM", help="CA that signed the server's certificate (TLS)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per call (default 300)"
    )


def _inputs_flag(
    parser: argparse.ArgumentParser, name: str, what: str, required: bool = True
) -> None:
    parser.add_argument(
        f"--{name}", required=required, metavar="FILE",
        help=f"{what}: .npy, .npz (one array per input), .pt or .json",
    )  # fmt: skip


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write results to .npy/.npz/.pt/.json"
    )
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                        help="dtype of numbers read from JSON (default float32)")  # fmt: skip


def _verify_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="check the answer against float64 central finite differences in "
                        "N directions (default 0: no check)")  # fmt: skip


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model id (from 'jacserve upload') or an archive file")


def _model(args: argparse.Namespace) -> str:
    path = pathlib.Path(args.model)
    return str(path) if path.exists() else args.model


def _read(args: argparse.Namespace, flag: str) -> tuple[list[str], list[torch.Tensor]]:
    return read_tensors(getattr(args, flag), dtype=_DTYPES[args.dtype])


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


def _pack(tensors: list[torch.Tensor]) -> Any:
    """One tensor as itself, several as a tuple (the model's positional inputs)."""
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _first(value: Any) -> torch.Tensor:
    """The first tensor of a result of any structure (the summary shows that one)."""
    while isinstance(value, tuple | list | dict):
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
    return value


def cmd_upload(client: Client, args: argparse.Namespace) -> None:
    _print(client.upload(args.archive))


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
        signature = ", ".join(
            f"{i.name}: {i.dtype or 'any'}{list(i.shape) if i.shape is not None else ''}"
            for i in method.inputs
        )
        _print(f"  {method.name}({signature})")
    for parameter in info.parameters:
        _print(f"  parameter {parameter.name}: {parameter.dtype}{list(parameter.shape)}")


def cmd_jvp(client: Client, args: argparse.Namespace) -> None:
    _, primals = _read(args, "inputs")
    _, tangents = _read(args, "tangents")
    result = client.jvp(_model(args), _pack(primals), _pack(tangents), device=args.device,
                        verify=args.verify)  # fmt: skip
    _summary("jvp", _first(result.jvp), result.metrics)
    if args.output:
        write_results(args.output, {"jvp": result.jvp, "output": result.output}, result.metrics)


def cmd_vjp(client: Client, args: argparse.Namespace) -> None:
    _, primals = _read(args, "inputs")
    _, cotangents = _read(args, "cotangents")
    result = client.vjp(_model(args), _pack(primals), _pack(cotangents), device=args.device,
                        verify=args.verify)  # fmt: skip
    _summary("vjp", _first(result.vjp), result.metrics)
    if args.output:
        write_results(args.output, {"vjp": result.vjp, "output": result.output}, result.metrics)


def _names(flag: str | None, count: int, fallback: list[str]) -> list[str] | None:
    if flag:
        names = [n.strip() for n in flag.split(",")]
        if len(names) != count:
            raise InputError(f"{len(names)} names given for {count} entries: {flag}")
        return names
    return fallback if len(fallback) == count and all(fallback) else None


def cmd_jacobian(client: Client, args: argparse.Namespace) -> None:
    names, inputs = _read(args, "inputs")
    if args.sparsity:
        _sparse_jacobian(client, args, inputs)
        return
    result = client.jacobian(
        _model(args), _pack(inputs), mode=args.mode, device=args.device, shards=args.shards,
        verify=args.verify,
    )  # fmt: skip
    _summary("jacobian", _first(result.jacobian), result.metrics)
    if result.shards:
        servers = len({s.target for s in result.shards})
        _print(f"split: {len(result.shards)} windows of passes over {servers} server(s)")
    if args.output:
        write_results(args.output, {"jacobian": result.jacobian, "output": result.output},
                      result.metrics)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        matrix = _matrix(result.output, result.jacobian)
        input_names = _input_labels(names, inputs)
        plot_jacobian(
            matrix, args.plot,
            input_names=_names(args.input_names, matrix.shape[1], input_names),
            output_names=_names(args.output_names, matrix.shape[0], []),
        )  # fmt: skip
        _print(f"plot: {args.plot}")


def _sparse_jacobian(client: Client, args: argparse.Namespace, inputs: list[torch.Tensor]) -> None:
    if args.sparsity == "detect":
        sparsity: Any = "detect"
    else:
        masks = read_tensors(args.sparsity)[1]
        if len(masks) != 1 or masks[0].dim() != 2:
            raise InputError(f"--sparsity {args.sparsity}: expected one [M, N] mask")
        sparsity = masks[0] != 0
    result = client.jacobian(_model(args), _pack(inputs), mode=args.mode, device=args.device,
                             sparsity=sparsity)  # fmt: skip
    matrix = result.jacobian
    _print(f"jacobian: sparse {list(matrix.shape)}, {matrix._nnz()} nonzeros, "
           f"{result.metrics.passes} passes (colours) instead of {min(matrix.shape)}")  # fmt: skip
    _summary("values", matrix.values(), result.metrics)
    if args.output:
        indices = matrix.indices()
        write_results(args.output, {"rows": indices[0], "cols": indices[1],
                                    "values": matrix.values(), "shape": torch.tensor(matrix.shape)},
                      result.metrics)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        plot_jacobian(matrix.to_dense(), args.plot, title="Sparse Jacobian ∂output/∂input")
        _print(f"plot: {args.plot}")


def _matrix(row_tensors: Any, blocks: Any) -> torch.Tensor:
    """Blocks structured like ``torch.autograd.functional.jacobian`` (a tensor, a tuple
    per row tensor, or a tuple of tuples) as one matrix: a row per element of
    ``row_tensors`` (the outputs; the inputs for a Hessian), entries flattened in order."""
    if isinstance(row_tensors, dict):  # a dict output: its entries in order
        blocks = tuple(blocks[key] for key in row_tensors)
        row_tensors = tuple(row_tensors.values())
    tuple_rows = isinstance(row_tensors, tuple | list)
    rows = blocks if tuple_rows else (blocks,)
    rows = [
        tuple(row.values()) if isinstance(row, dict) else row if isinstance(row, tuple) else (row,)
        for row in rows
    ]
    return torch.cat(
        [
            torch.cat([block.reshape(t.numel(), -1) for block in row], dim=1)
            for row, t in zip(rows, row_tensors if tuple_rows else (row_tensors,), strict=True)
        ],
        dim=0,
    )


def _input_labels(names: list[str], inputs: list[torch.Tensor]) -> list[str]:
    labels = []
    for name, tensor in zip(names, inputs, strict=True):
        count = tensor.numel()
        labels += [name] if count == 1 else [f"{name}[{i}]" for i in range(count)]
    return labels if all(names) else []


def cmd_grad(client: Client, args: argparse.Namespace) -> None:
    _, inputs = _read(args, "inputs")
    cotangents = _pack(_read(args, "cotangents")[1]) if args.cotangents else None
    result = client.parameter_gradients(_model(args), _pack(inputs), cotangents,
                                        device=args.device, verify=args.verify)  # fmt: skip
    _print(f"gradients of {len(result.gradients)} parameters:")
    for name, gradient in result.gradients.items():
        _print(
            f"  {name}: shape {list(gradient.shape)}, norm {float(gradient.double().norm()):.6g}"
        )
    _print(f"time: {result.metrics.timing.get('total', 0.0) * 1e3:.2f} ms")
    _print_verification(result.metrics)
    if args.output:
        write_results(args.output, {"grad": result.gradients, "output": result.output},
                      result.metrics)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_gradients

        plot_gradients(result.gradients, args.plot, top=args.top)
        _print(f"plot: {args.plot}")


def cmd_hessian(client: Client, args: argparse.Namespace) -> None:
    names, inputs = _read(args, "inputs")
    result = client.hessian(_model(args), _pack(inputs), device=args.device)
    _summary("hessian", _first(result.hessian), result.metrics)
    if args.output:
        write_results(args.output, {"hessian": result.hessian, "output": result.output},
                      result.metrics)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        matrix = _matrix(_pack(inputs), result.hessian)
        labels = _names(args.input_names, matrix.shape[0], _input_labels(names, inputs))
        plot_jacobian(matrix, args.plot, input_names=labels, output_names=labels)
        _print(f"plot: {args.plot}")


def cmd_hvp(client: Client, args: argparse.Namespace) -> None:
    _, inputs = _read(args, "inputs")
    _, vectors = _read(args, "vectors")
    result = client.hvp(_model(args), _pack(inputs), _pack(vectors), device=args.device,
                        gauss_newton=args.gauss_newton)  # fmt: skip
    _summary("gnvp" if args.gauss_newton else "hvp", _first(result.hvp), result.metrics)
    if args.output:
        write_results(args.output, {"hvp": result.hvp, "output": result.output}, result.metrics)


def cmd_sensitivity(client: Client, args: argparse.Namespace) -> None:
    names, inputs = _read(args, "inputs")
    result = client.sensitivity(_model(args), _pack(inputs), mode=args.mode, top_k=args.top,
                                device=args.device)  # fmt: skip
    labels = _element_labels(names, inputs)
    _summary("elasticities", result.elasticities, result.metrics)
    _print(
        f"top {len(result.top_inputs)} inputs by elasticity (relative change per relative change):"
    )
    for rank, item in enumerate(result.top_inputs, start=1):
        _print(f"  {rank:>3}. {labels[(item.input, item.element)]}: {item.score:.6g}")
    if args.output:
        write_results(args.output, {
            "elasticities": result.elasticities, "input_norms": result.input_norms,
            "input_elasticity_norms": result.input_elasticity_norms,
            "output_norms": result.output_norms, "output": result.output,
        }, result.metrics)  # fmt: skip
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
    names, inputs = _read(args, "inputs")
    result = client.top_singular(_model(args), _pack(inputs), args.k, steps=args.steps,
                                 device=args.device)  # fmt: skip
    _summary("singular values", result.values, result.metrics)
    for i, (value, residual) in enumerate(zip(result.values.tolist(), result.residuals.tolist(),
                                              strict=True), start=1):  # fmt: skip
        _print(f"  σ{i} = {value:.6g}  (residual {residual:.1e})")
    if args.output:
        write_results(args.output, {
            "values": result.values, "input_directions": result.input_directions,
            "output_directions": result.output_directions, "residuals": result.residuals,
        }, result.metrics)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_spectrum

        labels = list(_element_labels(names, inputs).values())
        plot_spectrum(result.values, result.input_directions, args.plot, input_names=labels,
                      residuals=result.residuals)  # fmt: skip
        _print(f"plot: {args.plot}")


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
}


def add_client_commands(commands: Any) -> None:
    """Add the client subcommands to ``jacserve``'s subparsers."""
    example = "Examples:\n  "
    raw = argparse.RawDescriptionHelpFormatter

    upload = commands.add_parser("upload", help="upload a model archive; prints its id",
        formatter_class=raw, epilog=example + "jacserve upload model.pt2 --target host:50051")  # fmt: skip
    upload.add_argument("archive", help="a torch.jit.save or torch.export.save file")
    _connection_flags(upload)

    models = commands.add_parser("models", help="list, show or delete models", formatter_class=raw,
        epilog=example + "jacserve models list\n  jacserve models show MODEL_ID\n  "
        "jacserve models delete MODEL_ID")  # fmt: skip
    models.add_argument("action", choices=["list", "show", "delete"])
    models.add_argument("model_id", nargs="?", help="for show and delete")
    _connection_flags(models)

    for name, help_text, vectors in (
        ("jvp", "Jacobian-vector product J·v", "tangents"),
        ("vjp", "vector-Jacobian product uᵀ·J", "cotangents"),
    ):
        sub = commands.add_parser(name, help=help_text, formatter_class=raw,
            epilog=example + f"jacserve {name} MODEL_ID --inputs x.npy --{vectors} v.npy -o out.npz")  # fmt: skip
        _model_arg(sub)
        _inputs_flag(sub, "inputs", "the model's inputs")
        _inputs_flag(sub, vectors, f"the {vectors}")
        sub.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: the server's)")
        _output_flags(sub)
        _verify_flag(sub)
        _connection_flags(sub)

    jacobian = commands.add_parser("jacobian", help="the full Jacobian, with an optional heatmap",
        formatter_class=raw, epilog=example + "jacserve jacobian MODEL_ID --inputs params.json "
        "--plot jacobian.png --output-names S,I,R")  # fmt: skip
    _model_arg(jacobian)
    _inputs_flag(jacobian, "inputs", "the model's inputs (npz/json keys name the heatmap columns)")
    jacobian.add_argument("--mode", choices=["auto", "forward", "reverse"], default="auto")
    jacobian.add_argument("--device", default="", help="cpu, cuda or cuda:N")
    jacobian.add_argument("--sparsity", metavar="detect|MASK",
        help="a sparse Jacobian by coloured passes: 'detect' (probed), or a file with an "
        "[M, N] mask of its nonzeros (.npy/.pt)")  # fmt: skip
    jacobian.add_argument("--shards", type=int, default=None,
        help="split the passes over this many concurrent windows (default: one per "
        "--target replica when the Jacobian is large; 1: never)")  # fmt: skip
    jacobian.add_argument("--plot", metavar="PNG", help="draw the Jacobian as a signed heatmap")
    jacobian.add_argument("--input-names", help="comma-separated labels of the input entries")
    jacobian.add_argument("--output-names", help="comma-separated labels of the output entries")
    _output_flags(jacobian)
    _verify_flag(jacobian)
    _connection_flags(jacobian)

    hessian = commands.add_parser("hessian", help="the Hessian of a scalar model output",
        formatter_class=raw, epilog=example + "jacserve hessian MODEL_ID --inputs x.npy "
        "--plot hessian.png -o h.npz")  # fmt: skip
    _model_arg(hessian)
    _inputs_flag(hessian, "inputs", "the model's inputs")
    hessian.add_argument("--device", default="", help="cpu, cuda or cuda:N")
    hessian.add_argument("--plot", metavar="PNG", help="draw the Hessian as a signed heatmap")
    hessian.add_argument("--input-names", help="comma-separated labels of the input entries")
    _output_flags(hessian)
    _connection_flags(hessian)

    hvp = commands.add_parser("hvp", help="Hessian-vector product H·v (or Gauss–Newton JᵀJ·v)",
        formatter_class=raw, epilog=example + "jacserve hvp MODEL_ID --inputs x.npy "
        "--vectors v.npy\n  jacserve hvp MODEL_ID --inputs x.npy --vectors v.npy --gauss-newton")  # fmt: skip
    _model_arg(hvp)
    _inputs_flag(hvp, "inputs", "the model's inputs")
    _inputs_flag(hvp, "vectors", "one vector per differentiated input")
    hvp.add_argument("--gauss-newton", action="store_true",
                     help="Jᵀ·(J·v) instead of H·v: for vector outputs")  # fmt: skip
    hvp.add_argument("--device", default="", help="cpu, cuda or cuda:N")
    _output_flags(hvp)
    _connection_flags(hvp)

    sensitivity = commands.add_parser("sensitivity",
        help="elasticities, norms and the inputs that matter most", formatter_class=raw,
        epilog=example + "jacserve sensitivity MODEL_ID --inputs params.json --top 5 "
        "--plot ranked.png")  # fmt: skip
    _model_arg(sensitivity)
    _inputs_flag(sensitivity, "inputs", "the model's inputs (npz/json keys name them)")
    sensitivity.add_argument("--mode", choices=["auto", "forward", "reverse"], default="auto")
    sensitivity.add_argument("--top", type=int, default=10, help="ranked inputs (default 10)")
    sensitivity.add_argument("--device", default="", help="cpu, cuda or cuda:N")
    sensitivity.add_argument("--plot", metavar="PNG", help="bar chart of the top inputs")
    _output_flags(sensitivity)
    _connection_flags(sensitivity)

    spectrum = commands.add_parser("spectrum",
        help="top singular values and directions of the Jacobian (matrix-free)",
        formatter_class=raw, epilog=example + "jacserve spectrum MODEL_ID --inputs x.npy "
        "--k 5 --plot spectrum.png")  # fmt: skip
    _model_arg(spectrum)
    _inputs_flag(spectrum, "inputs", "the model's inputs")
    spectrum.add_argument("--k", type=int, default=5, help="singular triplets (default 5)")
    spectrum.add_argument("--steps", type=int, default=0,
                          help="Lanczos steps (default: max(2k + 20, 40), capped by n and m)")  # fmt: skip
    spectrum.add_argument("--device", default="", help="cpu, cuda or cuda:N")
    spectrum.add_argument("--plot", metavar="PNG", help="singular values and top directions")
    _output_flags(spectrum)
    _connection_flags(spectrum)

    grad = commands.add_parser("grad", help="gradients with respect to the model's parameters",
        formatter_class=raw, epilog=example + "jacserve grad MODEL_ID --inputs x.npy "
        "--cotangents ones.npy --plot grads.png --top 15")  # fmt: skip
    _model_arg(grad)
    _inputs_flag(grad, "inputs", "the model's inputs")
    _inputs_flag(
        grad, "cotangents", "weights of the outputs (omit for a scalar output)", required=False
    )
    grad.add_argument("--device", default="", help="cpu, cuda or cuda:N")
    grad.add_argument("--plot", metavar="PNG", help="bar chart of the largest gradient entries")
    grad.add_argument("--top", type=int, default=20, help="entries in the bar chart (default 20)")
    _output_flags(grad)
    _verify_flag(grad)
    _connection_flags(grad)


def run(
    command: Callable[[Client, argparse.Namespace], None],
    args: argparse.Namespace,
    environ: Mapping[str, str],
) -> int:
    """Connect, run ``command``, and map failures to exit codes (see :mod:`jacserve.cli`)."""
    target = args.target or environ.get("JACSERVE_TARGET") or DEFAULT_TARGET
    token = args.token or environ.get("JACSERVE_TOKEN") or None
    ca = pathlib.Path(args.tls_ca).read_bytes() if args.tls_ca else None
    try:
        targets = [t.strip() for t in target.split(",") if t.strip()]
        with Client(targets, timeout=args.timeout, token=token, root_certificates=ca) as client:
            command(client, args)
    except InputError as exc:
        sys.stderr.write(f"jacserve: {exc}\n")
        return 2
    except (Unavailable, DeadlineExceeded) as exc:
        sys.stderr.write(f"jacserve: cannot reach a server at {target}: {exc.message}\n")
        return 4
    except JacserveError as exc:
        sys.stderr.write(f"jacserve: the server refused: {exc}\n")
        return 3
    return 0
