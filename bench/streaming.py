"""A 10000×10000 float32 Jacobian (400 MB) through StreamJacobian: time, client memory,
largest message.

Usage:
    python bench/streaming.py           # full run: writes bench/results/streaming.md
    python bench/streaming.py --quick   # 2000×2000, writes nothing (CI smoke run)

The server's message limit is 64 MiB, so the Jacobian cannot travel in one message. The
client runs in a fresh process; its peak memory is the growth of the resident-set
high-water mark (reset through /proc/self/clear_refs just before the call).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import textwrap

import torch

from jacserve.server.app import serve
from jacserve.server.config import ServerConfig

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LIMIT = 64 << 20

CLIENT = textwrap.dedent(
    """
    import json, sys, time, torch
    from jacserve.client import Client

    def status_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    target, limit, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = torch.randn(n)
    largest = 0
    def on_slice(block, start, values):
        global largest
        largest = max(largest, values.numel() * values.element_size())
    with Client(target, timeout=1800, max_message_bytes=limit) as client:
        model_id = client.upload(torch.jit.script(torch.nn.Tanh()))
        client.jacobian(model_id, torch.randn(64))  # warm
        client.jacobian(model_id, torch.randn(256), on_slice=on_slice, max_block_bytes=1 << 10)
        open("/proc/self/clear_refs", "w").write("5")
        before = status_kib("VmRSS")
        began = time.perf_counter()
        result = client.jacobian(model_id, x, progress=False)
        seconds = time.perf_counter() - began
        growth = (status_kib("VmHWM") - before) * 1024
        jacobian = result.jacobian
        diagonal = jacobian.diagonal().clone()
        ok = bool(torch.allclose(diagonal, 1 - torch.tanh(x) ** 2, rtol=1e-6, atol=1e-7))
        ok = ok and bool(jacobian.fill_diagonal_(0).count_nonzero() == 0)
        timing = result.metrics.timing
    largest = 0
    with Client(target, timeout=1800, max_message_bytes=limit) as client:
        client.jacobian(model_id, x, on_slice=on_slice, progress=False)
    print(json.dumps({"seconds": seconds, "growth": growth, "ok": ok, "largest": largest,
                      "server_total": timing["total"], "derivative": timing["derivative"]}))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 2000 if args.quick else 10_000
    size = n * n * 4
    running = serve(
        ServerConfig(port=0, metrics_port=None, workers=1, compile="off",
                     max_message_bytes=LIMIT, log_level="WARNING",
                     model_dir=tempfile.mkdtemp(prefix="jacserve-stream-bench-"))
    )  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, running.target, str(LIMIT), str(n)],
            capture_output=True, text=True, timeout=3600, check=True,
        )  # fmt: skip
    finally:
        running.stop(grace=0)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [
        "## Streaming a large Jacobian",
        "",
        f"{datetime.date.today()} · {platform.machine()}, {os.cpu_count()} cores · torch "
        f"{torch.__version__}",
        "",
        f"{n}×{n} float32 Jacobian of tanh ({size / 1e6:.0f} MB) with the server's message "
        f"limit at {LIMIT >> 20} MiB, slices of 4 MiB (the default):",
        "",
        "| figure | value |",
        "|---|---|",
        f"| end to end (client call) | {r['seconds']:.2f} s |",
        f"| server: derivative / whole request | {r['derivative']:.2f} s / {r['server_total']:.2f} s |",
        f"| client peak memory growth | {r['growth'] / 1e6:.0f} MB ({r['growth'] / size:.2f}× the Jacobian) |",
        f"| largest slice | {r['largest'] / 2**20:.1f} MiB (limit {LIMIT >> 20} MiB) |",
        f"| result correct (diagonal 1 − tanh², zeros elsewhere) | {r['ok']} |",
        "",
    ]
    print("\n".join(lines))
    if not args.quick:
        from suite import write_benchmarks  # bench/ is on sys.path when run as a script

        (RESULTS / "streaming.md").write_text("\n".join(lines))
        write_benchmarks()


if __name__ == "__main__":
    main()
