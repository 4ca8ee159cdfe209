"""Reverse mode within a memory budget: checkpointed reverse against unbudgeted reverse.

Usage:
    python bench/checkpointing.py          # full run: writes bench/results/checkpointing.md
                                           # and regenerates BENCHMARKS.md (a few minutes)
    python bench/checkpointing.py --quick  # seconds, writes nothing (CI smoke run)

Issue #15, item 4. A deep, narrow tanh network (torch.export archive, float64) whose
reverse tape dominates, through the SDK against a **default** server in its own process
for the times, and one started with ``--memory-meter tensors`` for the peaks (the
tensors' own, where the default meter reads the process's RSS):
its Jacobian unbudgeted (plain reverse, the whole tape kept) and with a budget of a
third, a quarter and a sixth of the tape (plus the result's bytes). Reported: the server's compute time
(metrics: forward + derivative), the segments and recomputation, the measured peak
against the budget, and the ratio to unbudgeted reverse (target ≤ 1.5×, the cost of one
extra forward pass). Variants are interleaved round by round; medians.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
import warnings

import grpc
import torch

from jacserve.client import Client, ResourceExhausted

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from request_path import start_server

warnings.filterwarnings("ignore")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Deep(torch.nn.Module):
    """``depth`` tanh layers of ``width`` over a batch of rows, summed to ``m`` outputs."""

    def __init__(self, width: int, depth: int, m: int = 8) -> None:
        super().__init__()
        torch.manual_seed(depth)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.head = torch.nn.Linear(width, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).sum(0)


def tape_bytes(exported: torch.export.ExportedProgram, x: torch.Tensor) -> int:
    from jacserve.server.engine.checkpointed import GraphSegments

    return GraphSegments(exported.module(), 1).profile([x], (0,)).tape_bytes


def measure(
    target: str, depth: int, width: int, batch: int, rounds: int
) -> list[dict[str, object]]:
    model = Deep(width, depth).double()
    x = torch.randn(batch, width, dtype=torch.float64)
    exported = torch.export.export(model, (x,))
    tape = tape_bytes(exported, x)
    fixed = (8 * x.numel() + 8 + x.numel()) * 8
    variants = {"unbudgeted": None} | {f"tape/{d}": tape // d + fixed for d in (3, 4, 6)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    last: dict[str, object] = {}
    reference = torch.func.jacrev(model)(x)
    with Client(target, timeout=900) as client:
        model_id = client.upload(exported)
        for name, budget in list(variants.items()):  # warm: measure, plan, check
            try:
                client.jacobian(model_id, x, mode="reverse", max_memory_bytes=budget)
            except ResourceExhausted as refused:  # √depth activations must fit
                print(f"{name}: {refused.message[:160]}")
                del variants[name], times[name]
        for _ in range(rounds):
            for name, budget in variants.items():
                r = client.jacobian(model_id, x, mode="reverse", max_memory_bytes=budget)
                times[name].append(r.metrics.timing["forward"] + r.metrics.timing["derivative"])
                last[name] = r
                assert torch.allclose(r.jacobian, reference, rtol=1e-9, atol=1e-12)
    base = statistics.median(times["unbudgeted"])
    rows = []
    for name, budget in variants.items():
        r = last[name]
        rows.append({
            "model": f"{depth}×{width} tanh, batch {batch}", "variant": name,
            "budget": budget, "tape": tape, "segments": r.metrics.checkpoint_segments,
            "chunks": r.metrics.chunks, "recompute": r.metrics.recompute_seconds,
            "peak": r.metrics.peak_memory_bytes, "seconds": statistics.median(times[name]),
            "ratio": statistics.median(times[name]) / base,
        })  # fmt: skip
    return rows


def report(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | budget | tape | segments | backward sweeps | peak | compute ms | recompute ms "
        "| / unbudgeted (target ≤ 1.5) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = "none" if r["budget"] is None else f"{r['variant']} = {r['budget'] / 1e6:.2f} MB"
        peak = r["peak"] / 1e6
        ok = "" if r["budget"] is None else (" ✓" if r["peak"] <= r["budget"] else " ✗ over")
        lines.append(
            f"| {r['model']} | {budget} | {r['tape'] / 1e6:.2f} MB | {r['segments']} | "
            f"{r['chunks']} | {peak:.2f} MB{ok} | {1e3 * r['seconds']:.1f} | "
            f"{1e3 * r['recompute']:.1f} | {r['ratio']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, write nothing")
    args = parser.parse_args()
    cases = [(128, 32, 16)] if args.quick else [(128, 64, 32), (256, 32, 16)]
    rows = []
    for flags, rounds in (((), 2 if args.quick else 7), (("--memory-meter", "tensors"), 1)):
        measured = []
        with tempfile.TemporaryDirectory() as folder:
            server, target = start_server(folder, *flags)
            try:
                with grpc.insecure_channel(target) as channel:
                    grpc.channel_ready_future(channel).result(timeout=120)
                for depth, width, batch in cases:
                    measured += measure(target, depth, width, batch, rounds)
            finally:
                server.terminate()
                server.wait(30)
        if not rows:
            rows = measured  # the default server's times
        else:
            for row, peaks in zip(rows, measured, strict=True):
                row["peak"] = peaks["peak"]
    stamp = time.strftime("%Y-%m-%d")
    text = (
        "## Reverse mode within a memory budget (`python bench/checkpointing.py`)\n\n"
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, Python "
        f"{sys.version.split()[0]}; {stamp}. SDK → a default server in its own process "
        "(times), and one with `--memory-meter tensors` (peaks: live tensors), `mode=reverse`, "
        "torch.export archive, float64; compute = the server's forward + derivative time, "
        "median of interleaved rounds; every Jacobian checked against torch.func.jacrev.\n\n"
        f"{report(rows)}\n"
    )
    print(text)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "checkpointing.md").write_text(text)
        from suite import write_benchmarks  # bench/ is on sys.path when run as a script

        write_benchmarks()


if __name__ == "__main__":
    main()
