"""The client commands of ``jacserve``: each a function of parsed flags and a client, and
``COMMANDS``, the table of them by name (``gsa``: ``jacserve.cli._gsa_command``;
``propagate`` and ``fisher``: ``jacserve.cli._uncertainty_commands``).

Every file a command reads is checked before it calls the server; a file or usage error
raises ``jacserve.cli._io.InputError`` (exit 2, see ``jacserve.cli._run``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from jacserve.cli._common import (
    checked_archive,
    checked_model,
    flag_names,
    pack,
    print_line,
    print_verification,
    read,
    save,
    summary,
)
from jacserve.cli._gsa_command import cmd_gsa
from jacserve.cli._io import InputError, read_tensors
from jacserve.cli._results import dense, first, flat, jacobian_array, matrix
from jacserve.cli._uncertainty_commands import cmd_fisher, cmd_propagate
from jacserve.client import Client

__all__ = ["COMMANDS"]


def cmd_upload(client: Client, args: argparse.Namespace) -> None:
    """``jacserve upload``: upload a model archive and print its id."""
    print_line(client.upload(checked_archive(args.archive, "archive")))


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
    """``jacserve models list|show|delete``: the server's models."""
    if args.action == "list":
        for info in client.list_models():
            methods = ", ".join(m.name for m in info.methods)
            print_line(
                f"{info.model_id}  {info.format:<12}  {info.archive_size_bytes:>10} bytes  {methods}"
            )
        return
    if not args.model_id:
        raise InputError(f"'jacserve models {args.action}' needs a model id")
    if args.action == "delete":
        client.delete_model(args.model_id)
        print_line(f"deleted {args.model_id}")
        return
    info = client.get_model(args.model_id)
    print_line(f"model {info.model_id} ({info.format}, {info.archive_size_bytes} bytes)")
    for method in info.methods:
        signature = ", ".join(_input_signature(i) for i in method.inputs)
        print_line(f"  {method.name}({signature})")
    for parameter in info.parameters:
        print_line(f"  parameter {parameter.name}: {parameter.dtype}{list(parameter.shape)}")


def cmd_jvp(client: Client, args: argparse.Namespace) -> None:
    """``jacserve jvp``: a Jacobian-vector product (forward mode)."""
    model, (_, primals) = checked_model(args), read(args, "inputs")
    _, tangents = read(args, "tangents")
    result = client.jvp(model, pack(primals), pack(tangents), device=args.device,
                        verify=args.verify)  # fmt: skip
    summary("jvp", first(result.jvp), result.metrics)
    save(args, {"jvp": result.jvp, "output": result.output}, result.metrics,
         lambda: flat(result.jvp))  # fmt: skip


def cmd_vjp(client: Client, args: argparse.Namespace) -> None:
    """``jacserve vjp``: a vector-Jacobian product (reverse mode)."""
    model, (_, primals) = checked_model(args), read(args, "inputs")
    _, cotangents = read(args, "cotangents")
    result = client.vjp(model, pack(primals), pack(cotangents), device=args.device,
                        verify=args.verify)  # fmt: skip
    summary("vjp", first(result.vjp), result.metrics)
    save(args, {"vjp": result.vjp, "output": result.output}, result.metrics,
         lambda: flat(result.vjp))  # fmt: skip


def cmd_jacobian(client: Client, args: argparse.Namespace) -> None:
    """``jacserve jacobian``: the full Jacobian, or a sparse one with ``--sparsity``."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    if args.sparsity:
        _sparse_jacobian(client, args, model, inputs)
        return
    result = client.jacobian(
        model, pack(inputs), mode=args.mode, device=args.device, shards=args.shards,
        verify=args.verify,
    )  # fmt: skip
    summary("jacobian", first(result.jacobian), result.metrics)
    if result.shards:
        servers = len({s.target for s in result.shards})
        print_line(f"split: {len(result.shards)} windows of passes over {servers} server(s)")
    save(args, {"jacobian": result.jacobian, "output": result.output}, result.metrics,
         lambda: jacobian_array(result.output, result.jacobian))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        values = matrix(result.output, result.jacobian)
        input_names = _input_labels(names, inputs)
        plot_jacobian(
            values, args.plot,
            input_names=flag_names(args.input_names, values.shape[1], input_names),
            output_names=flag_names(args.output_names, values.shape[0], []),
        )  # fmt: skip
        print_line(f"plot: {args.plot}")


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
    result = client.jacobian(model, pack(inputs), mode=args.mode, device=args.device,
                             sparsity=_sparsity(args))  # fmt: skip
    sparse = result.jacobian
    print_line(f"jacobian: sparse {list(sparse.shape)}, {sparse._nnz()} nonzeros, "
               f"{result.metrics.passes} passes (colours) instead of {min(sparse.shape)}")  # fmt: skip
    summary("values", sparse.values(), result.metrics)
    indices = sparse.indices()
    save(args, {"rows": indices[0], "cols": indices[1], "values": sparse.values(),
                "shape": torch.tensor(sparse.shape)},
         result.metrics, lambda: dense(sparse))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        plot_jacobian(sparse.to_dense(), args.plot, title="Sparse Jacobian ∂output/∂input")
        print_line(f"plot: {args.plot}")


def _input_labels(names: list[str], inputs: list[torch.Tensor]) -> list[str]:
    labels = []
    for name, tensor in zip(names, inputs, strict=True):
        count = tensor.numel()
        labels += [name] if count == 1 else [f"{name}[{i}]" for i in range(count)]
    return labels if all(names) else []


def cmd_grad(client: Client, args: argparse.Namespace) -> None:
    """``jacserve grad``: the gradients of the model's parameters."""
    model, (_, inputs) = checked_model(args), read(args, "inputs")
    cotangents = pack(read(args, "cotangents")[1]) if args.cotangents else None
    result = client.parameter_gradients(model, pack(inputs), cotangents,
                                        device=args.device, verify=args.verify)  # fmt: skip
    print_line(f"gradients of {len(result.gradients)} parameters:")
    for name, gradient in result.gradients.items():
        print_line(
            f"  {name}: shape {list(gradient.shape)}, norm {float(gradient.double().norm()):.6g}"
        )
    print_line(f"time: {result.metrics.timing.get('total', 0.0) * 1e3:.2f} ms")
    print_verification(result.metrics)
    save(args, {"grad": result.gradients, "output": result.output}, result.metrics,
         lambda: flat(list(result.gradients.values())))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_gradients

        plot_gradients(result.gradients, args.plot, top=args.top)
        print_line(f"plot: {args.plot}")


def cmd_hessian(client: Client, args: argparse.Namespace) -> None:
    """``jacserve hessian``: the Hessian of a scalar output w.r.t. the inputs."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    result = client.hessian(model, pack(inputs), device=args.device)
    summary("hessian", first(result.hessian), result.metrics)
    save(args, {"hessian": result.hessian, "output": result.output}, result.metrics,
         lambda: jacobian_array(pack(inputs), result.hessian))  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_jacobian

        values = jacobian_array(pack(inputs), result.hessian).reshape(
            sum(t.numel() for t in inputs), -1
        )
        labels = flag_names(args.input_names, values.shape[0], _input_labels(names, inputs))
        plot_jacobian(values, args.plot, input_names=labels, output_names=labels)
        print_line(f"plot: {args.plot}")


def cmd_hvp(client: Client, args: argparse.Namespace) -> None:
    """``jacserve hvp``: a Hessian- (or Gauss–Newton-) vector product."""
    model, (_, inputs) = checked_model(args), read(args, "inputs")
    _, vectors = read(args, "vectors")
    result = client.hvp(model, pack(inputs), pack(vectors), device=args.device,
                        gauss_newton=args.gauss_newton)  # fmt: skip
    summary("gnvp" if args.gauss_newton else "hvp", first(result.hvp), result.metrics)
    save(args, {"hvp": result.hvp, "output": result.output}, result.metrics,
         lambda: flat(result.hvp))  # fmt: skip


def cmd_sensitivity(client: Client, args: argparse.Namespace) -> None:
    """``jacserve sensitivity``: elasticities and the most influential inputs."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    result = client.sensitivity(model, pack(inputs), mode=args.mode, top_k=args.top,
                                device=args.device)  # fmt: skip
    labels = _element_labels(names, inputs)
    summary("elasticities", result.elasticities, result.metrics)
    print_line(
        f"top {len(result.top_inputs)} inputs by elasticity (relative change per relative change):"
    )
    for rank, item in enumerate(result.top_inputs, start=1):
        print_line(f"  {rank:>3}. {labels[(item.input, item.element)]}: {item.score:.6g}")
    save(args, {
        "elasticities": result.elasticities, "input_norms": result.input_norms,
        "input_elasticity_norms": result.input_elasticity_norms,
        "output_norms": result.output_norms, "output": result.output,
    }, result.metrics, lambda: result.elasticities)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_gradients

        scores = {labels[(r.input, r.element)]: torch.tensor(r.score) for r in result.top_inputs}
        plot_gradients(scores, args.plot, top=args.top, title="Most influential inputs",
                       xlabel="elasticity norm over all outputs")  # fmt: skip
        print_line(f"plot: {args.plot}")


def _element_labels(names: list[str], inputs: list[torch.Tensor]) -> dict[tuple[int, int], str]:
    """``(input position, flat index)`` → ``name[index]`` (``input0[3]`` without names)."""
    labels = {}
    for position, tensor in enumerate(inputs):
        name = names[position] if position < len(names) and names[position] else f"input{position}"
        for element in range(tensor.numel()):
            labels[(position, element)] = name if tensor.numel() == 1 else f"{name}[{element}]"
    return labels


def cmd_spectrum(client: Client, args: argparse.Namespace) -> None:
    """``jacserve spectrum``: the Jacobian's top singular values and directions."""
    model, (names, inputs) = checked_model(args), read(args, "inputs")
    result = client.top_singular(model, pack(inputs), args.k, steps=args.steps,
                                 device=args.device)  # fmt: skip
    summary("singular values", result.values, result.metrics)
    for i, (value, residual) in enumerate(zip(result.values.tolist(), result.residuals.tolist(),
                                              strict=True), start=1):  # fmt: skip
        print_line(f"  σ{i} = {value:.6g}  (residual {residual:.1e})")
    save(args, {
        "values": result.values, "input_directions": result.input_directions,
        "output_directions": result.output_directions, "residuals": result.residuals,
    }, result.metrics, lambda: result.values)  # fmt: skip
    if args.plot:
        from jacserve.cli._plot import plot_spectrum

        labels = list(_element_labels(names, inputs).values())
        plot_spectrum(result.values, result.input_directions, args.plot, input_names=labels,
                      residuals=result.residuals)  # fmt: skip
        print_line(f"plot: {args.plot}")


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
