"""The flags of ``jacserve``'s client commands, with examples in every ``--help``.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_client_commands(parser.add_subparsers(dest="command"))
>>> parser.parse_args(["jacobian", "m.pt", "--inputs", "x.npy", "-o", "J.npy"]).output
'J.npy'
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from jacserve.client._connection import DEFAULT_TARGET

__all__ = ["DTYPES", "add_client_commands"]

DTYPES = ("float32", "float64")
_RAW = argparse.RawDescriptionHelpFormatter
_FILES = (
    "Files: inputs are .npy, .npz (one array per model input), .pt or .json; -o FILE.npy "
    "holds {primary}; .npz, .pt and .json hold every array by name (.json adds the metrics)."
)
_EXITS = (
    "Exit codes: 0 success, 2 usage or file error (one line; files are checked before "
    "anything is sent), 3 the server refused, 4 no server reachable or no answer in time."
)


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
        "--output", "-o", metavar="FILE",
        help="write results: .npy the primary result (see below), .npz, .pt or .json every "
        "array by name",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of numbers read from JSON (default float32)")  # fmt: skip


def _verify_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="check the answer against float64 central finite differences in "
                        "N directions (default 0: no check)")  # fmt: skip


def _device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: the server's)")


def _command(
    commands: Any, name: str, help_text: str, examples: list[str], primary: str = ""
) -> argparse.ArgumentParser:
    """A client subcommand with its examples (and the files it reads and writes)."""
    epilog = "Examples:\n" + "".join(f"  {line}\n" for line in examples)
    notes = [_FILES.format(primary=primary)] if primary else []
    epilog += "".join(f"\n{textwrap.fill(note, 88)}\n" for note in [*notes, _EXITS])
    return commands.add_parser(name, help=help_text, formatter_class=_RAW, epilog=epilog)


def _derivative_command(
    commands: Any, name: str, help_text: str, examples: list[str], primary: str
) -> argparse.ArgumentParser:
    """A subcommand of a model and its inputs, with -o, --dtype and --device."""
    parser = _command(commands, name, help_text, examples, primary)
    parser.add_argument("model", help="model id (from 'jacserve upload') or an archive file")
    _inputs_flag(parser, "inputs", "the model's inputs (npz/json keys name them)")
    _device_flag(parser)
    _output_flags(parser)
    return parser


def _add_model_commands(commands: Any) -> None:
    upload = _command(commands, "upload", "upload a model archive; prints its id",
                      ["jacserve upload docs/examples/sir.pt --target host:50051"])  # fmt: skip
    upload.add_argument("archive", help="a torch.jit.save or torch.export.save file")
    _connection_flags(upload)
    models = _command(commands, "models", "list, show or delete models", [
        "jacserve models list", "jacserve models show MODEL_ID", "jacserve models delete MODEL_ID",
    ])  # fmt: skip
    models.add_argument("action", choices=["list", "show", "delete"])
    models.add_argument("model_id", nargs="?", help="for show and delete")
    _connection_flags(models)


def _add_products(commands: Any) -> None:
    for name, help_text, vectors, primary in (
        ("jvp", "Jacobian-vector product J·v", "tangents", "J·v (shaped like the output)"),
        ("vjp", "vector-Jacobian product uᵀ·J", "cotangents", "uᵀ·J (shaped like the input)"),
    ):
        sub = _derivative_command(commands, name, help_text, [
            f"jacserve {name} MODEL_ID --inputs x.npy --{vectors} v.npy -o {name}.npy",
            f"jacserve {name} model.pt2 --inputs x.npz --{vectors} v.npz -o all.npz",
        ], primary + "; several arrays flattened and concatenated in order")  # fmt: skip
        _inputs_flag(sub, vectors, f"the {vectors}")
        _verify_flag(sub)
        _connection_flags(sub)
    hvp = _derivative_command(commands, "hvp", "Hessian-vector product H·v (or Gauss–Newton JᵀJ·v)", [
        "jacserve hvp MODEL_ID --inputs x.npy --vectors v.npy -o hv.npy",
        "jacserve hvp MODEL_ID --inputs x.npy --vectors v.npy --gauss-newton",
    ], "H·v (shaped like the input; several arrays flattened and concatenated)")  # fmt: skip
    _inputs_flag(hvp, "vectors", "one vector per differentiated input")
    hvp.add_argument("--gauss-newton", action="store_true",
                     help="Jᵀ·(J·v) instead of H·v: for vector outputs")  # fmt: skip
    _connection_flags(hvp)


def _add_matrices(commands: Any) -> None:
    jacobian = _derivative_command(commands, "jacobian", "the full Jacobian, with an optional heatmap", [
        "jacserve jacobian docs/examples/sir.pt --inputs docs/examples/params.json --dtype float64 "
        "--plot jacobian.png -o J.npy",
        "jacserve jacobian MODEL_ID --inputs x.npy --sparsity detect -o J.npz",
    ], "the Jacobian: as torch.autograd.functional.jacobian lays it out for one input and "
       "output, else the [M, N] matrix over all output and input entries (a sparse one dense)")  # fmt: skip
    jacobian.add_argument("--mode", choices=["auto", "forward", "reverse"], default="auto")
    jacobian.add_argument("--sparsity", metavar="detect|MASK",
        help="a sparse Jacobian by coloured passes: 'detect' (probed), or a file with an "
        "[M, N] mask of its nonzeros (.npy/.pt)")  # fmt: skip
    jacobian.add_argument("--shards", type=int, default=None,
        help="split the passes over this many concurrent windows (default: one per "
        "--target replica when the Jacobian is large; 1: never)")  # fmt: skip
    jacobian.add_argument("--plot", metavar="PNG", help="draw the Jacobian as a signed heatmap")
    jacobian.add_argument("--input-names", help="comma-separated labels of the input entries")
    jacobian.add_argument("--output-names", help="comma-separated labels of the output entries")
    _verify_flag(jacobian)
    _connection_flags(jacobian)
    hessian = _derivative_command(commands, "hessian", "the Hessian of a scalar model output", [
        "jacserve hessian MODEL_ID --inputs x.npy --plot hessian.png -o H.npy",
    ], "the Hessian (the [N, N] matrix over all input entries for several inputs)")  # fmt: skip
    hessian.add_argument("--plot", metavar="PNG", help="draw the Hessian as a signed heatmap")
    hessian.add_argument("--input-names", help="comma-separated labels of the input entries")
    _connection_flags(hessian)


def _add_analyses(commands: Any) -> None:
    sensitivity = _derivative_command(commands, "sensitivity",
        "elasticities, norms and the inputs that matter most", [
        "jacserve sensitivity docs/examples/sir.pt --inputs docs/examples/params.json --top 3 "
        "--plot ranked.png",
    ], "the [M, N] elasticities")  # fmt: skip
    sensitivity.add_argument("--mode", choices=["auto", "forward", "reverse"], default="auto")
    sensitivity.add_argument("--top", type=int, default=10, help="ranked inputs (default 10)")
    sensitivity.add_argument("--plot", metavar="PNG", help="bar chart of the top inputs")
    _connection_flags(sensitivity)
    spectrum = _derivative_command(commands, "spectrum",
        "top singular values and directions of the Jacobian (matrix-free)", [
        "jacserve spectrum MODEL_ID --inputs x.npy --k 5 --plot spectrum.png",
    ], "the k singular values")  # fmt: skip
    spectrum.add_argument("--k", type=int, default=5, help="singular triplets (default 5)")
    spectrum.add_argument("--steps", type=int, default=0,
                          help="Lanczos steps (default: max(2k + 20, 40), capped by n and m)")  # fmt: skip
    spectrum.add_argument("--plot", metavar="PNG", help="singular values and top directions")
    _connection_flags(spectrum)
    grad = _derivative_command(commands, "grad", "gradients with respect to the model's parameters", [
        "jacserve grad MODEL_ID --inputs x.npy --cotangents w.npy --plot grads.png --top 15",
        "jacserve grad MODEL_ID --inputs x.npy --cotangents w.npy -o grad.npy",
    ], "the gradient: every parameter's, flattened and concatenated in the model's "
       "parameter order (as torch.nn.utils.parameters_to_vector)")  # fmt: skip
    _inputs_flag(
        grad, "cotangents", "weights of the outputs (omit for a scalar output)", required=False
    )
    grad.add_argument("--plot", metavar="PNG", help="bar chart of the largest gradient entries")
    grad.add_argument("--top", type=int, default=20, help="entries in the bar chart (default 20)")
    _verify_flag(grad)
    _connection_flags(grad)


_LAWS = (
    "Laws: --uniform LOW HIGH or --normal MEAN STD give every element of every varied input "
    "the same law; --distribution FILE.json one law per varied input (a list in --wrt order, "
    "or an object keyed by the input names of --inputs), each parameter a number or nested "
    'lists shaped like the input (one law per element): [{"uniform": {"low": [0.24, 0.08, '
    '0.008], "high": [0.36, 0.12, 0.012]}}] or {"params": {"normal": {"mean": 0, "std": 1}}}. '
    "The ranking and --plot show, per input element, the largest total-index bound over the "
    "outputs (or output K's with --output-index K); a bound above 1 only ranks."
)


def _add_global(commands: Any) -> None:
    gsa = _derivative_command(commands, "gsa",
        "global sensitivity over input laws: DGSM, Sobol' total-index bounds, active subspaces", [
        "jacserve gsa docs/examples/sir.pt --inputs docs/examples/params.json "
        "--distribution laws.json --input-names beta,gamma,I0 --top 3 --plot gsa.png -o gsa.json",
        "jacserve gsa MODEL_ID --inputs x.npz --wrt x --uniform -3.14 3.14 --samples 4096",
        "jacserve gsa MODEL_ID --inputs x.npy --normal 0 1 --plot-eigenvalues decay.png",
    ], "the [M, N] total-index bounds (all indices and the active subspaces: .npz, .pt, "
       ".json)")  # fmt: skip
    gsa.epilog = f"{gsa.epilog}\n{textwrap.fill(_LAWS, 88)}\n"
    laws = gsa.add_mutually_exclusive_group(required=True)
    laws.add_argument("--uniform", nargs=2, type=float, metavar=("LOW", "HIGH"),
                      help="every varied element uniform on [LOW, HIGH)")  # fmt: skip
    laws.add_argument("--normal", nargs=2, type=float, metavar=("MEAN", "STD"),
                      help="every varied element normal with this mean and std")  # fmt: skip
    laws.add_argument("--distribution", metavar="FILE.json",
                      help="one law per varied input (see Laws below)")  # fmt: skip
    gsa.add_argument("--wrt", metavar="INPUTS",
                     help="comma-separated positions or names of the varied inputs (default: "
                     "every floating input); the others stay at their --inputs values")  # fmt: skip
    gsa.add_argument("--samples", type=int, default=1024,
                     help="design points (default 1024; a power of two keeps Sobol' balance)")  # fmt: skip
    gsa.add_argument("--seed", type=int, default=0, help="seed of the design (default 0)")
    gsa.add_argument("--bootstrap", type=int, default=100,
                     help="resamples for the eigenvalue intervals (default 100; 0: none)")  # fmt: skip
    gsa.add_argument("--mode", choices=["auto", "forward", "reverse"], default="auto")
    gsa.add_argument("--top", type=int, default=10, help="ranked inputs (default 10)")
    gsa.add_argument("--output-index", type=int, metavar="K",
                     help="rank and plot for output element K alone (default: the largest "
                     "bound over outputs; every output's eigenvalues, each over its largest)")  # fmt: skip
    gsa.add_argument("--plot", metavar="PNG",
                     help="ranked bar chart of the total-index bounds, and the eigenvalue decay")  # fmt: skip
    gsa.add_argument("--plot-eigenvalues", metavar="PNG",
                     help="the eigenvalue decay alone (log scale, bootstrap intervals)")  # fmt: skip
    gsa.add_argument("--input-names", help="comma-separated labels of the varied input entries")
    gsa.add_argument("--output-names", help="comma-separated labels of the output entries")
    _connection_flags(gsa)


_COVARIANCE = (
    "Covariance: --covariance FILE holds Σ [N, N] over the N varied input elements "
    "(flattened and concatenated in --wrt order, as the summary lists them): .npy, .npz or "
    ".pt with one array, or .json nested lists such as [[1e-4, 0, 0], [0, 4e-5, 0], [0, 0, "
    "1e-6]]; it must be symmetric positive semi-definite (the server checks: exit 3). --std "
    "S [S ...] is a diagonal Σ = diag(S²): one std for every element, or one per element. "
    "The covariance is first order: J Σ Jᵀ, exact for a linear model."
)
_NOISE = (
    "Fisher information F = Jᵀ Σ⁻¹ J for outputs observed with Gaussian noise Σ "
    "(--noise-std S: Σ = S² I; --noise-covariance FILE: Σ [M, M] over the M output "
    "elements), w.r.t. the model's parameters (every floating one, or --parameters NAME "
    "...) or, with --wrt, the inputs named. Standard errors are √diag F⁻¹ (the Cramér–Rao "
    "bound), NaN when F is singular (an eigenvalue at most 1e-12 × the largest: the data "
    "cannot identify that direction; a warning names the parameters involved, exit 0)."
)


def _add_uncertainty(commands: Any) -> None:
    propagate = _derivative_command(commands, "propagate",
        "first-order uncertainty propagation: output mean, std and covariance J Σ Jᵀ", [
        "jacserve propagate docs/examples/sir.pt --inputs docs/examples/params.json "
        "--dtype float64 --std 0.015 0.005 0.001 --input-names beta,gamma,I0",
        "jacserve propagate MODEL_ID --inputs x.npz --wrt x --covariance cov.npy -o out.json",
    ], "the [M, M] output covariance (.npz, .pt, .json: also mean, std and the input "
       "covariance)")  # fmt: skip
    propagate.epilog = f"{propagate.epilog}\n{textwrap.fill(_COVARIANCE, 88)}\n"
    sigma = propagate.add_mutually_exclusive_group(required=True)
    sigma.add_argument("--covariance", metavar="FILE",
                       help="Σ [N, N] over the varied input elements (.npy, .npz, .pt, .json)")  # fmt: skip
    sigma.add_argument("--std", nargs="+", type=float, metavar="S",
                       help="a diagonal Σ: one std for every varied element, or one per element")  # fmt: skip
    propagate.add_argument("--wrt", metavar="INPUTS",
                           help="comma-separated positions or names of the varied inputs "
                           "(default: every floating input); the others stay fixed")  # fmt: skip
    propagate.add_argument(
        "--input-names", help="comma-separated labels of the varied input entries"
    )
    propagate.add_argument("--output-names", help="comma-separated labels of the output entries")
    _connection_flags(propagate)

    fisher = _derivative_command(commands, "fisher",
        "Fisher information of the parameters: eigenvalues, standard errors, identifiability", [
        "jacserve fisher model.pt --inputs design.npy --noise-std 0.1 --plot fisher.png",
        "jacserve fisher model.pt --inputs t.npy --parameters r t0 -o fisher.json",
        "jacserve fisher docs/examples/sir.pt --inputs docs/examples/params.json --dtype "
        "float64 --wrt params --noise-std 0.005 --labels beta,gamma,I0",
    ], "the [P, P] Fisher information (.npz, .pt, .json: also eigenvalues, eigenvectors and "
       "standard errors)")  # fmt: skip
    fisher.epilog = f"{fisher.epilog}\n{textwrap.fill(_NOISE, 88)}\n"
    noise = fisher.add_mutually_exclusive_group()
    noise.add_argument("--noise-std", type=float, default=1.0, metavar="S",
                       help="independent noise of this std on every output element (default 1)")  # fmt: skip
    noise.add_argument("--noise-covariance", metavar="FILE",
                       help="Σ [M, M] over the output elements, symmetric positive definite")  # fmt: skip
    about = fisher.add_mutually_exclusive_group()
    about.add_argument("--parameters", nargs="+", metavar="NAME",
                       help="the parameters (default: every floating-point one)")  # fmt: skip
    about.add_argument("--wrt", metavar="INPUTS",
                       help="comma-separated positions or names of inputs to take the "
                       "information about, instead of parameters")  # fmt: skip
    fisher.add_argument("--labels",
                        help="comma-separated labels of the P parameter (or input) elements")  # fmt: skip
    fisher.add_argument("--plot", metavar="PNG",
                        help="the eigenvalue spectrum (log scale), each eigenvalue labelled by "
                        "its eigenvector's dominant element")  # fmt: skip
    _connection_flags(fisher)


def add_client_commands(commands: Any) -> None:
    """Add the client subcommands to ``jacserve``'s subparsers."""
    _add_model_commands(commands)
    _add_products(commands)
    _add_matrices(commands)
    _add_analyses(commands)
    _add_global(commands)
    _add_uncertainty(commands)
