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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds = 2 if args.quick else 7
    servers = {
        compile_mode: serve(
            ServerConfig(port=0, metrics_port=None, compile=compile_mode, log_level="WARNING")
        )
        for compile_mode in ("on", "off")
    }
    rows, worst = [], 0.0
    try:
        clients = {k: Client(s.target, timeout=600) for k, s in servers.items()}
        for name, (model, x) in _cases(args.quick).items():
            exported = torch.export.export(model, (x,))
            local_exported = exported.module()
            ids = {k: c.upload(exported) for k, c in clients.items()}
            for _ in range(2):  # first calls: load, plan, lazy initialisation here too
                _local(model, x)
                _local(local_exported, x)
                for k, c in clients.items():
                    c.jacobian(ids[k], x)
            t = _interleaved(
                {
                    "module": lambda model=model, x=x: _local(model, x),
                    "exported": lambda m=local_exported, x=x: _local(m, x),
                    "on": lambda x=x, i=ids["on"]: clients["on"].jacobian(i, x),
                    "off": lambda x=x, i=ids["off"]: clients["off"].jacobian(i, x),
                },
                rounds,
            )
            threads = clients["on"].jacobian(ids["on"], x).metrics.threads
            local = min(t["module"], t["exported"])
            worst = max(worst, t["on"] / local)
            rows.append(
                f"| {name} | {t['module'] * 1e3:.0f} | {t['exported'] * 1e3:.0f} | "
                f"{t['on'] * 1e3:.0f} ({t['on'] / local:.2f}×) | {t['off'] * 1e3:.0f} "
                f"({t['off'] / local:.2f}×) | {threads} |"
            )
    finally:
        for s in servers.values():
            s.stop(grace=0)
    text = [
        "## One large request on an idle server\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; Python "
        f"{platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads in-process); "
        f"{datetime.date.today().isoformat()}. `python bench/cores.py`.\n",
        "End to end through the SDK against local `torch.func.jacrev` of the module and of "
        "its `torch.export` program, the faster of the two being the reference (median of "
        f"{rounds} interleaved calls, float32, ms; ratios against that reference).\n",
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
