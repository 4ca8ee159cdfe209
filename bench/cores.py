"""One large request on an otherwise idle server: does it use every core?

Usage:
    python bench/cores.py           # full run: writes bench/results/cores.md and
                                    # regenerates BENCHMARKS.md (a few minutes)
    python bench/cores.py --quick   # smaller models, writes nothing (CI smoke run)

Two Jacobians, through the SDK against a default server (and, beside it, one with
``--compile off``), against ``torch.func.jacrev`` in this process with the machine's
default threads: a ResNet-18 (width 64) input Jacobian of one 32×32 image (10 × 3072)
and an MLP 2000→2000→2000 (2000 × 2000), float32. Calls of the server and the local
function are interleaved, and the figure is the ratio of medians (issue #13's target:
≤ 1.15×). ``metrics.threads`` says how many intra-op threads the server used.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch.func import jacrev

from jacserve.client import Client
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig

warnings.filterwarnings("ignore")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.zoo import ResNet18  # noqa: E402 - the architecture the model-zoo tests use

RESULTS = ROOT / "bench" / "results"


def _cases(quick: bool) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    size = 500 if quick else 2000
    mlp = torch.nn.Sequential(
        torch.nn.Linear(size, size), torch.nn.Tanh(), torch.nn.Linear(size, size)
    )
    resnet = ResNet18(width=16 if quick else 64).eval()
    return {
        f"ResNet-18 input Jacobian, 10 × 3072 ({'width 16' if quick else 'width 64'})": (
            resnet,
            torch.randn(1, 3, 32, 32),
        ),
        f"MLP Jacobian, {size} × {size}": (mlp, torch.randn(size)),
    }


def _local(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The local reference as a careful user runs it: no autograd graph for the
    parameters (the server's engine records none either)."""
    with torch.no_grad():
        return jacrev(model)(x)


def _interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _settled(client: Client, model_id: str, x: torch.Tensor, seconds: float) -> str:
    """Call until the model's compilation settles (or ``seconds`` pass); its state."""
    until, state = time.monotonic() + seconds, ""
    while time.monotonic() < until:
        state = client.jacobian(model_id, x).metrics.compilation
        if not state.startswith(("counting", "requested")):
            break
        time.sleep(1.0)
    return state.split(":")[0] or "off"


def _against_local(
    compile_mode: str,
    cases: dict[str, tuple[torch.nn.Module, torch.Tensor]],
    rounds: int,
    settle_seconds: float,
) -> dict[str, tuple[dict[str, float], int, str]]:
    """Per case: local and server medians, the server's threads, the compile state.

    One server at a time, measured once its compile worker (if any) is done: a compile
    at nice 19 still slows any OpenMP team beside it, the local one's too.
    """
    server = serve(
        ServerConfig(port=0, metrics_port=None, compile=compile_mode, log_level="WARNING")
    )
    out = {}
    try:
        with Client(server.target, timeout=600) as client:
            for name, (model, x) in cases.items():
                exported = torch.export.export(model, (x,))
                local_exported = exported.module()
                model_id = client.upload(exported)
                _local(model, x)
                _local(local_exported, x)
                state = _settled(client, model_id, x, settle_seconds)
                t = _interleaved(
                    {
                        "module": lambda model=model, x=x: _local(model, x),
                        "exported": lambda m=local_exported, x=x: _local(m, x),
                        "server": lambda x=x, i=model_id: client.jacobian(i, x),
                    },
                    rounds,
                )
                out[name] = (t, client.jacobian(model_id, x).metrics.threads, state)
    finally:
        server.stop(grace=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds = 2 if args.quick else 7
    cases = _cases(args.quick)
    settle = 20.0 if args.quick else 600.0
    default = _against_local("on", cases, rounds, settle)
    off = _against_local("off", cases, rounds, settle)
    rows, worst = [], 0.0
    for name in cases:
        (t, threads, state), (t_off, _, _) = default[name], off[name]
        local = min(t["module"], t["exported"])
        local_off = min(t_off["module"], t_off["exported"])
        worst = max(worst, t["server"] / local)
        rows.append(
            f"| {name} | {t['module'] * 1e3:.0f} | {t['exported'] * 1e3:.0f} | "
            f"{t['server'] * 1e3:.0f} ({t['server'] / local:.2f}×, {state}) | "
            f"{t_off['server'] * 1e3:.0f} ({t_off['server'] / local_off:.2f}×) | {threads} |"
        )
    text = [
        "## One large request on an idle server\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; Python "
        f"{platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads in-process); "
        f"{datetime.date.today().isoformat()}. `python bench/cores.py`.\n",
        "End to end through the SDK against local `torch.func.jacrev` of the module and of "
        "its `torch.export` program, the faster of the two being the reference (median of "
        f"{rounds} interleaved calls, float32, ms; ratios against that reference). One "
        "server at a time; the default one is measured once its compile worker settled "
        "(the state is in brackets), the `--compile off` one against its own local "
        "rounds (local columns: the default server's run).\n",
        "| Jacobian | local jacrev (module) | local jacrev (its export) | default server "
        "| `--compile off` | server threads |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"**Worst ratio, default server: {worst:.2f}× (target ≤ 1.15×).**\n",
    ]
    print("\n".join(text))
    if not args.quick:
        from suite import write_benchmarks  # bench/ is on sys.path when run as a script

        (RESULTS / "cores.md").write_text("\n".join(text))
        write_benchmarks()


if __name__ == "__main__":
    main()
