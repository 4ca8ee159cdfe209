"""Core benchmark: jacserve over loopback gRPC against the same work done in-process.

Every row is measured side by side in one run, so ratios are comparable even on a noisy,
shared machine. Prints a Markdown table (paste into BENCHMARKS.md).

Usage:
    python bench/bench_core.py           # full run (a few minutes on 2 cores)
    python bench/bench_core.py --quick   # seconds; the CI smoke run
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch.func import jacfwd, jacrev

from jacserve.client import Client
from jacserve.server import engine
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig

warnings.filterwarnings("ignore")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mlp(n: int, m: int, hidden: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(n, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, m)
    ).eval()


def archive(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def small_jacobian_rows(
    client: Client, n: int, m: int, repeats: int
) -> list[tuple[str, str, float, float, str]]:
    """Auto against forced modes, and jacserve against the best torch.func transform."""
    net = mlp(n, m)
    xs = torch.randn(n)
    net_id = client.upload(archive(net))
    best_direct = min(
        median_seconds(lambda: jacfwd(net)(xs), repeats),
        median_seconds(lambda: jacrev(net)(xs), repeats),
    )
    times = {
        mode: median_seconds(lambda mode=mode: client.jacobian(net_id, xs, mode=mode), repeats)
        for mode in ("auto", "forward", "reverse")
    }
    best_forced = min(times["forward"], times["reverse"])
    chosen = client.jacobian(net_id, xs).metrics.mode
    in_process = median_seconds(lambda: engine.jacobian(net, [xs]), repeats)
    label = f"MLP {n}→{m} Jacobian"
    return [
        (
            label,
            f"auto (chose {chosen}) / best forced mode",
            times["auto"],
            best_forced,
            f"{times['auto'] / best_forced:.2f}×",
        ),
        (
            label,
            "jacserve e2e / best of torch.func jacfwd, jacrev",
            times["auto"],
            best_direct,
            f"{times['auto'] / best_direct:.2f}×",
        ),
        (
            label,
            "engine in-process / best torch.func",
            in_process,
            best_direct,
            f"{in_process / best_direct:.2f}×",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (CI smoke)")
    args = parser.parse_args()
    repeats = 1 if args.quick else 15
    big = 256 if args.quick else 4096
    small = (100, 4) if args.quick else (1000, 10)

    rows: list[tuple[str, str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as model_dir:
        running = serve(
            ServerConfig(
                port=0, metrics_port=None, model_dir=model_dir, max_message_bytes=512 << 20
            )
        )
        try:
            with Client(running.target, timeout=600, max_message_bytes=512 << 20) as client:
                # 1. A large square Jacobian: transfer dominates.
                layer = torch.nn.Linear(big, big, bias=False).eval()
                x = torch.randn(big)
                model_id = client.upload(archive(layer))
                remote = median_seconds(
                    lambda: client.jacobian(model_id, x, mode="reverse"), max(1, repeats // 5)
                )
                local = median_seconds(
                    lambda: engine.jacobian(layer, [x], mode="reverse"), max(1, repeats // 5)
                )
                direct = median_seconds(lambda: jacrev(layer)(x), max(1, repeats // 5))
                label = f"Jacobian {big}×{big} float32 ({big * big * 4 >> 20} MiB)"
                rows.append(
                    (
                        label,
                        "jacserve e2e / engine in-process",
                        remote,
                        local,
                        f"{remote / local:.2f}×",
                    )
                )
                rows.append(
                    (
                        label,
                        "engine in-process / torch.func.jacrev",
                        local,
                        direct,
                        f"{local / direct:.2f}×",
                    )
                )

                # 2. Small MLP Jacobians: auto mode against each forced mode, and against torch.func.
                for n, m in (small, small[::-1]):
                    rows.extend(small_jacobian_rows(client, n, m, repeats))

                # 3. A small JVP: the fixed cost of one round trip.
                net = mlp(8, 8)
                xs, v = torch.randn(8), torch.randn(8)
                net_id = client.upload(archive(net))
                remote = median_seconds(lambda: client.jvp(net_id, xs, v), repeats * 4)
                local = median_seconds(lambda: engine.jvp(net, [xs], [v]), repeats * 4)
                rows.append(
                    (
                        "JVP of an 8→8 MLP",
                        "jacserve e2e / engine in-process",
                        remote,
                        local,
                        f"+{(remote - local) * 1e3:.2f} ms",
                    )
                )
        finally:
            running.stop(grace=0)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print("| case | comparison | A (ms) | B (ms) | A/B |")
    print("|---|---|---:|---:|---:|")
    for label, what, a, b, ratio in rows:
        print(f"| {label} | {what} | {a * 1e3:.2f} | {b * 1e3:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
