"""jacserve's benchmark suite: every figure a ratio of two things timed side by side.

Usage:
    python bench/suite.py                   # full run on CPU: writes bench/results/cpu.md,
                                            # bench/results/cpu-modes.png and BENCHMARKS.md
    python bench/suite.py --device cuda     # the same on a GPU: results/cuda.md, cuda-modes.png
    python bench/suite.py --quick           # a few seconds, writes nothing (CI smoke run)

JAX is compared when it is installed (``pip install -e '.[bench]'``). Timings are medians
of interleaved rounds (each round times every variant once), so slow drifts of a shared
machine hit all variants alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import torch
from torch.func import jacfwd, jacrev

from jacserve.client import Client
from jacserve.codec import encode_tensors
from jacserve.server import engine
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig
from jacserve.server.engine._measure import LiveTensorMeter
from jacserve.server.engine.compiled import CompiledPrograms, median_seconds
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

warnings.filterwarnings("ignore")
ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
from models import Mlp  # noqa: E402 - bench/ is on sys.path as a script

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", False)
except ImportError:  # JAX is optional: the comparison is skipped without it
    jax = None


# -- timing ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    min_rounds: int = 3,
    max_rounds: int = 15,
    budget_seconds: float = 3.0,
) -> dict[str, float]:
    """Median seconds of each variant over interleaved rounds, after one warm-up each."""
    for fn in variants.values():
        fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (
        rounds < max_rounds and time.perf_counter() - started < budget_seconds
    ):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(values) for name, values in samples.items()}


# -- the functions -----------------------------------------------------------------------


class Simulator(torch.nn.Module):
    """A linear response followed by a long elementwise tail, as in an explicit solver."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        torch.manual_seed(n * 104729 + m)
        self.lift = torch.nn.Linear(n, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lift(x)
        for _ in range(6):
            y = torch.tanh(y) * torch.sin(y) + y
        return y


FAMILIES: dict[str, type[torch.nn.Module]] = {"mlp": Mlp, "simulator": Simulator}


def jax_jacobians(module: torch.nn.Module) -> tuple[Callable, Callable] | None:
    """jit(jacfwd(f)) and jit(jacrev(f)) of the same function with the same weights."""
    if jax is None:
        return None
    p = {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in module.state_dict().items()}
    if isinstance(module, Mlp):

        def f(x):
            h = jnp.tanh(p["hidden.weight"] @ x + p["hidden.bias"])
            return p["out.weight"] @ h + p["out.bias"]

    else:

        def f(x):
            y = p["lift.weight"] @ x + p["lift.bias"]
            for _ in range(6):
                y = jnp.tanh(y) * jnp.sin(y) + y
            return y

    try:
        return jax.jit(jax.jacfwd(f)), jax.jit(jax.jacrev(f))
    except Exception:  # a JAX without a usable backend: compare without it
        return None


# -- sections ----------------------------------------------------------------------------


@dataclass
class Report:
    """Collected tables and target checks of one run."""

    label: str
    lines: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str, bool]] = field(default_factory=list)
    grid: dict[str, dict[tuple[int, int], dict[str, float]]] = field(default_factory=dict)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
        )
        self.lines.extend("| " + " | ".join(row) + " |" for row in rows)
        self.lines.append("")

    def target(self, name: str, goal: str, measured: str, met: bool) -> None:
        self.targets.append((name, goal, measured, met))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _compiled_variant(module: torch.nn.Module, x: torch.Tensor) -> tuple[Callable[[], object], str]:
    """The engine with a compiled program for auto's mode, built and kept as a compile
    worker builds and keeps it (verified, then only if faster than eager)."""
    exported = torch.export.export(module, (x,)).module()
    cache = engine.DerivativeCache()
    programs = CompiledPrograms(lambda inputs: exported, compile_after=1)

    def run() -> engine.EngineResult:
        return engine.jacobian(exported, [x], cache=cache, compiled=programs)

    def eager() -> engine.EngineResult:
        with programs.eager_only():
            return run()

    for _ in range(6):  # measure both modes, settle auto, build; until nothing is pending
        state = run().metrics.compilation
        for built in programs.build_requested():
            if built.outcome == "built":
                programs.settle_measured(built.key, median_seconds(run), median_seconds(eager))
        if not state.startswith(("counting", "requested", "not requested yet")):
            break
    return run, run().metrics.compilation


def _grid_cell(
    cls: type[torch.nn.Module],
    n: int,
    m: int,
    device: torch.device,
    quick: bool,
    compiled: bool,
) -> tuple[dict[str, float], str, str]:
    """Times of every variant on one cell, the mode auto chose, and the compiled state."""
    module = cls(n, m).to(device)
    x = torch.randn(n, device=device)
    cache = engine.DerivativeCache()
    variants: dict[str, Callable[[], object]] = {
        "forward": lambda: engine.jacobian(module, [x], mode="forward", cache=cache),
        "reverse": lambda: engine.jacobian(module, [x], mode="reverse", cache=cache),
        "auto": lambda: engine.jacobian(module, [x], cache=cache),
        "jacfwd": lambda: jacfwd(module)(x),
        "jacrev": lambda: jacrev(module)(x),
    }
    compiled_state = ""
    if compiled:
        variants["compiled"], compiled_state = _compiled_variant(module, x)
    jaxed = jax_jacobians(module)
    if jaxed is not None:
        xj = jax.device_put(jnp.asarray(x.cpu().numpy()))
        variants["jax_fwd"] = lambda: jaxed[0](xj).block_until_ready()
        variants["jax_rev"] = lambda: jaxed[1](xj).block_until_ready()
    budget = 0.5 if quick else 3.0
    t = timed_rounds(variants, device, min_rounds=1 if quick else 5, budget_seconds=budget)
    return t, engine.jacobian(module, [x], cache=cache).metrics.mode, compiled_state


def mode_grid(
    report: Report,
    device: torch.device,
    sizes: list[int],
    quick: bool,
    compiled: bool,
) -> None:
    """Auto against forced modes, torch.func and JAX on a grid of n and m."""
    for family, cls in FAMILIES.items():
        report.lines.append(
            f"### Jacobian of `{family}` ({cls.__doc__.strip()}), float32, warm, in-process\n"
        )
        rows, worst_auto, worst_jax = [], 0.0, 0.0
        report.grid[family] = {}
        for n in sizes:
            for m in sizes:
                t, chose, compiled_state = _grid_cell(cls, n, m, device, quick, compiled)
                best_forced = min(t["forward"], t["reverse"])
                best_func = min(t["jacfwd"], t["jacrev"])
                auto_ratio = t["auto"] / best_forced
                worst_auto = max(worst_auto, auto_ratio)
                # The engine's warm time: the compiled program when one serves, else eager auto.
                served = min(t["auto"], t.get("compiled", float("inf")))
                row = [
                    str(n),
                    str(m),
                    ms(t["forward"]),
                    ms(t["reverse"]),
                    f"{ms(t['auto'])} ({chose[0]})",
                    f"{auto_ratio:.2f}",
                    f"{t['auto'] / best_func:.2f}",
                ]
                if compiled:
                    row += [
                        ms(t["compiled"])
                        if compiled_state == "ready"
                        else compiled_state.split(":")[0],
                        f"{served / best_func:.2f}",
                    ]
                if "jax_fwd" in t:
                    best_jax = min(t["jax_fwd"], t["jax_rev"])
                    if family == "mlp":
                        worst_jax = max(worst_jax, served / best_jax)
                    row += [ms(best_jax), f"{served / best_jax:.2f}"]
                rows.append(row)
                report.grid[family][(n, m)] = t
        header = [
            "n",
            "m",
            "forward ms",
            "reverse ms",
            "auto ms (chose)",
            "auto / best forced",
            "auto / best torch.func",
        ]
        if compiled:
            header += ["compiled ms", "engine / best torch.func"]
        if jax is not None:
            header += ["JAX jit best ms", "engine / JAX"]
        report.table(header, rows)
        report.target(
            f"auto within 1.10× of the faster forced mode ({family})",
            "≤ 1.10 on every cell",
            f"worst cell {worst_auto:.2f}",
            worst_auto <= 1.10,
        )
        if family == "mlp" and jax is not None:
            report.target(
                "engine warm ≤ 1.5× JAX jit (MLP grid)",
                "≤ 1.5 on every cell",
                f"worst cell {worst_jax:.2f}",
                worst_jax <= 1.5,
            )


def _obvious_cell(
    n: int, m: int, device: torch.device, quick: bool, compiled: bool
) -> dict[str, float]:
    module = Mlp(n, m).to(device)
    x = torch.randn(n, device=device)
    cache = engine.DerivativeCache()
    served: Callable[[], object] = lambda: engine.jacobian(module, [x], cache=cache)  # noqa: E731
    if compiled:
        served = _compiled_variant(module, x)[0]

    def per_row_loop() -> torch.Tensor:
        xr = x.detach().requires_grad_()
        y = module(xr)
        return torch.stack([torch.autograd.grad(y[i], xr, retain_graph=True)[0] for i in range(m)])

    return timed_rounds(
        {
            "jacserve": served,
            "loop": per_row_loop,
            "functional": lambda: torch.autograd.functional.jacobian(module, x),
        },
        device,
        min_rounds=1 if quick else 3,
        budget_seconds=0.5 if quick else 4.0,
    )


def obvious_approaches(report: Report, device: torch.device, quick: bool, compiled: bool) -> None:
    """Against a per-row backward loop and torch.autograd.functional.jacobian, at m = 1000."""
    m = 100 if quick else 1000
    rows, worst_loop, worst_functional = [], float("inf"), float("inf")
    for n in [10, 100] if quick else [10, 100, 1000]:
        t = _obvious_cell(n, m, device, quick, compiled)
        worst_loop = min(worst_loop, t["loop"] / t["jacserve"])
        worst_functional = min(worst_functional, t["functional"] / t["jacserve"])
        rows.append(
            [
                f"{n}→{m}",
                ms(t["jacserve"]),
                ms(t["loop"]),
                f"{t['loop'] / t['jacserve']:.0f}×",
                ms(t["functional"]),
                f"{t['functional'] / t['jacserve']:.0f}×",
            ]
        )
    served = "compiled program when verified and faster, else eager" if compiled else "eager"
    report.lines.append(
        f"### Against the obvious approaches (MLP, m = {m}, in-process; jacserve: {served})\n"
    )
    report.table(
        [
            "shape",
            "jacserve engine ms",
            "per-row backward loop ms",
            "speed-up",
            "autograd.functional.jacobian ms",
            "speed-up",
        ],
        rows,
    )
    report.target(
        "≥ 30× faster than a per-row backward loop at m = 1000",
        "≥ 30",
        f"smallest {worst_loop:.0f}×",
        worst_loop >= 30,
    )
    report.target(
        "≥ 10× faster than torch.autograd.functional.jacobian at m = 1000",
        "≥ 10",
        f"smallest {worst_functional:.0f}×",
        worst_functional >= 10,
    )


def _echo_server(max_bytes: int, response: bytes) -> tuple[grpc.Server, str]:
    """A bare gRPC server whose one method answers a fixed payload: the transport's floor."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return response

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes),
        ],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _service_case(
    client: Client,
    raw: pb_grpc.JacobianServiceStub,
    n: int,
    m: int,
    layer: bool,
    count: int,
    device: torch.device,
) -> dict[str, float]:
    """p50 of end to end, in-process, and a bare echo of the same request and response sizes."""
    limit = 512 << 20
    module = (torch.nn.Linear(n, m) if layer else Mlp(n, m)).eval()
    x = torch.randn(n)
    model_id = client.upload(torch.jit.script(module))
    cache = engine.DerivativeCache()
    dev_module, dev_x = module.to(device), x.to(device)
    request = pb.JacobianRequest(
        function=pb.FunctionRef(model_id=model_id),
        inputs=encode_tensors([x]),
        mode=pb.DERIVATIVE_MODE_REVERSE,
        options=pb.ComputeOptions(device=device.type),
    )
    response_bytes = raw.Jacobian(request, timeout=600).ByteSize()
    server, echo_target = _echo_server(limit, bytes(response_bytes))
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(echo_target, options=options) as channel:
        call = channel.unary_unary("/bench.Echo/Call")
        payload = request.SerializeToString()
        variants: dict[str, Callable[[], object]] = {
            "remote": lambda: client.jacobian(model_id, x, mode="reverse", device=device.type),
            "local": lambda: engine.jacobian(dev_module, [dev_x], mode="reverse", cache=cache),
            "echo": lambda: call(payload, timeout=600),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            fn()
        for _ in range(count):
            for name, fn in variants.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                samples[name].append(time.perf_counter() - t0)
    server.stop(0)
    return {k: statistics.median(v) for k, v in samples.items()}


def service_cost(
    report: Report, client: Client, target: str, device: torch.device, quick: bool
) -> None:
    """End to end against in-process compute plus a bare gRPC echo of the same bytes."""
    limit = 512 << 20
    rows = []
    raw = pb_grpc.JacobianServiceStub(
        grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
    )
    cases = (
        (100, 100, False, 50 if quick else 400),
        (300 if quick else 2000, 300 if quick else 2000, True, 3 if quick else 15),
    )
    for n, m, layer, count in cases:
        p50 = _service_case(client, raw, n, m, layer, count, device)
        floor = p50["local"] + p50["echo"]
        rows.append(
            [
                f"{m}×{n} float32 ({m * n * 4 / 1e6:.2f} MB)",
                ms(p50["remote"]),
                ms(p50["local"]),
                ms(p50["echo"]),
                f"{(p50['remote'] - floor) * 1e3:+.3f} ms",
                f"{p50['remote'] / floor:.2f}×",
            ]
        )
        if not layer:
            over = (p50["remote"] - floor) * 1e3
            report.target(
                "100×100 Jacobian: p50 overhead above in-process + bare echo",
                "≤ 0.3 ms",
                f"{over:+.3f} ms",
                over <= 0.3,
            )
        else:
            ratio = p50["remote"] / floor
            report.target(
                f"{m}×{n} float32 end to end / (in-process + echo)",
                "≤ 1.25",
                f"{ratio:.2f}",
                ratio <= 1.25,
            )
    report.lines.append("### The service's own cost (p50, loopback, reverse mode)\n")
    report.table(
        [
            "Jacobian",
            "end to end ms",
            "in-process ms",
            "bare gRPC echo ms",
            "e2e − (in-process + echo)",
            "e2e / (in-process + echo)",
        ],
        rows,
    )


def batching(report: Report, client: Client, device: torch.device, quick: bool) -> None:
    """k = 100 tangents in one request against 100 single requests."""
    module = Mlp(100, 100).eval()
    x = torch.randn(100)
    model_id = client.upload(torch.jit.script(module))
    k = 20 if quick else 100
    tangents = torch.randn(k, 100)
    t = timed_rounds(
        {
            "batched": lambda: client.jvp(model_id, x, tangents, batched=True, device=device.type),
            "singles": lambda: [
                client.jvp(model_id, x, tangents[i], device=device.type) for i in range(k)
            ],
        },
        torch.device("cpu"),
        min_rounds=1 if quick else 5,
        budget_seconds=0.5 if quick else 4.0,
    )
    speedup = t["singles"] / t["batched"]
    report.lines.append("### Batching (JVPs of a 100→100 MLP, end to end)\n")
    report.table(
        ["request", "ms", "speed-up"],
        [
            [f"{k} tangents in one request", ms(t["batched"]), f"{speedup:.1f}×"],
            [f"{k} single requests", ms(t["singles"]), "1.0×"],
        ],
    )
    report.target(
        f"k = {k} tangents in one request vs {k} requests", "≥ 5×", f"{speedup:.1f}×", speedup >= 5
    )


def memory_budget(report: Report, device: torch.device, quick: bool) -> None:
    """A Jacobian whose unchunked passes need about 4× the budget, run under the budget."""
    torch.manual_seed(0)
    m = 500 if quick else 2000
    module = Simulator(64, m).to(device)
    x = torch.randn(64, device=device)
    cache = engine.DerivativeCache()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        engine.jacobian(module, [x], mode="reverse")
        unchunked_peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with LiveTensorMeter() as meter:
            engine.jacobian(module, [x], mode="reverse")
        unchunked_peak = meter.peak_bytes
    budget = unchunked_peak // 4

    def chunked():
        return engine.jacobian(module, [x], mode="reverse", max_memory_bytes=budget, cache=cache)

    result = chunked()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        chunked()
        chunked_peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with LiveTensorMeter() as meter:
            chunked()
        chunked_peak = meter.peak_bytes
    t = timed_rounds(
        {
            "unchunked": lambda: engine.jacobian(module, [x], mode="reverse", cache=cache),
            "chunked": chunked,
        },
        device,
        min_rounds=1 if quick else 5,
        budget_seconds=0.5 if quick else 4.0,
    )
    ratio = t["chunked"] / t["unchunked"]
    report.lines.append(f"### Memory budget (`simulator` 64→{m}, reverse mode, in-process)\n")
    report.table(
        ["run", "peak tensor MB", "ms", "chunks"],
        [
            ["unchunked", f"{unchunked_peak / 1e6:.1f}", ms(t["unchunked"]), "1"],
            [
                f"budget {budget / 1e6:.1f} MB",
                f"{chunked_peak / 1e6:.1f}",
                ms(t["chunked"]),
                str(result.metrics.chunks),
            ],
        ],
    )
    report.target(
        "a Jacobian needing ~4× the budget stays under it",
        "peak ≤ budget",
        f"{chunked_peak / 1e6:.1f} MB ≤ {budget / 1e6:.1f} MB",
        chunked_peak <= budget,
    )
    report.target("...at ≤ 1.5× the unchunked time", "≤ 1.5", f"{ratio:.2f}", ratio <= 1.5)


def plot(report: Report, path: pathlib.Path, sizes: list[int]) -> None:
    """Time against n for each m and mode (MLP family), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = report.grid["mlp"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.6), sharey=True)
    for ax, m in zip(axes, sizes, strict=True):
        for name, style in (
            ("forward", "o-"),
            ("reverse", "s-"),
            ("auto", "k--"),
            ("jax_fwd", ":"),
            ("jax_rev", ":"),
        ):
            if name in grid[(sizes[0], m)]:
                ax.plot(sizes, [grid[(n, m)][name] * 1e3 for n in sizes], style, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"m = {m}")
        ax.set_xlabel("n (inputs)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per Jacobian (MLP, warm)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"jacserve engine: time against n and m by mode ({report.label})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    jax_text = f", JAX {jax.__version__}" if jax is not None else ""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads){jax_text}; "
        f"{datetime.date.today().isoformat()}"
    )


def write_benchmarks() -> None:
    """BENCHMARKS.md = the header + every results/*.md section present."""
    sections = sorted(RESULTS.glob("*.md"))
    header = (ROOT / "bench" / "HEADER.md").read_text()
    body = "\n".join(p.read_text() for p in sections)
    (ROOT / "BENCHMARKS.md").write_text(header + "\n" + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one round, write nothing"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-compiled",
        action="store_true",
        help="skip the compiled-program column (saves minutes)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [10, 100] if args.quick else [10, 100, 1000, 4000]
    report = Report(label=device.type)
    with tempfile.TemporaryDirectory() as model_dir:
        running = serve(
            ServerConfig(
                port=0,
                metrics_port=None,
                model_dir=model_dir,
                device=args.device,
                log_level="WARNING",
            )
        )
        try:
            with Client(running.target, timeout=600) as client:
                compiled = not (args.no_compiled or args.quick)
                mode_grid(report, device, sizes, args.quick, compiled)
                obvious_approaches(report, device, args.quick, compiled)
                service_cost(report, client, running.target, device, args.quick)
                batching(report, client, device, args.quick)
                memory_budget(report, device, args.quick)
        finally:
            running.stop(grace=0)
    text = [f"## {device.type.upper()}: {machine(device)}\n", "### Targets\n"]
    text += ["| target | goal | measured | met |", "|---|---|---|---|"]
    text += [
        f"| {name} | {goal} | {measured} | {'yes' if met else '**no**'} |"
        for name, goal, measured, met in report.targets
    ]
    text.append("")
    if not args.quick:
        text.append(f"![time against n and m]({'bench/results/' + device.type + '-modes.png'})\n")
    text += report.lines
    output = "\n".join(text)
    print(output)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{device.type}.md").write_text(output + "\n")
        plot(report, RESULTS / f"{device.type}-modes.png", sizes)
        write_benchmarks()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
