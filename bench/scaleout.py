"""One Jacobian split across 1, 2 and 3 loopback replicas, and a model of the time on
replicas that are separate machines.

Usage:
    python bench/scaleout.py           # full run: bench/results/scaleout.{md,png}
    python bench/scaleout.py --quick   # small model, one round, writes nothing (CI)

Each replica is a server with one worker and one torch thread: "one replica, one core".
On this 2-core machine, replicas share the cores (and the client needs some), so more
replicas cannot be faster here; the measured rows say what splitting costs. The model
(NOTE: [Scale-out of one Jacobian] in the client's ``_sharding``) is

    T(R) = t_plan + max over lanes of the sum of its windows' times + t_assemble

checked first against the windows measured in each run (the critical path must explain
the wall time), then fed with uncontended window times — windows computed one at a time
on one server, fitted as ``t(k) = a + b·k`` for k passes — to predict R machines.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import grpc
import torch

from jacserve.client import Client
from jacserve.client._sharding import WINDOWS_PER_LANE as WINDOWS
from jacserve.codec import encode_tensors
from jacserve.server.app import RunningServer, serve
from jacserve.server.config import ServerConfig
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Simulator(torch.nn.Module):
    """n inputs → a wide hidden layer → n outputs: every pass costs two matrix products."""

    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(n, hidden)
        self.b = torch.nn.Linear(hidden, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))).sin()


def _replica(model_dir: str) -> RunningServer:
    return serve(
        ServerConfig(
            port=0,
            metrics_port=None,
            model_dir=model_dir,
            workers=1,
            torch_threads=1,
            compile="off",
            log_level="WARNING",
        )
    )


def _critical_path(result) -> float:
    """The slowest lane's windows, by client time (one lane per target)."""
    lanes: dict[str, float] = defaultdict(float)
    for shard in result.shards:
        lanes[shard.target] += shard.seconds
    return max(lanes.values())


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``t = a + b·k``."""
    ks, ts = [k for k, _ in points], [t for _, t in points]
    k_mean, t_mean = statistics.fmean(ks), statistics.fmean(ts)
    spread = sum((k - k_mean) ** 2 for k in ks) or 1.0
    b = sum((k - k_mean) * (t - t_mean) for k, t in points) / spread
    return max(0.0, t_mean - b * k_mean), b


def run(n: int, hidden: int, rounds: int, max_replicas: int) -> dict:
    module = torch.jit.script(Simulator(n, hidden))
    x = torch.randn(n)
    reference = torch.autograd.functional.jacobian(Simulator(n, hidden), x)
    with contextlib.ExitStack() as stack:
        folders = [stack.enter_context(tempfile.TemporaryDirectory()) for _ in range(max_replicas)]
        replicas = [stack.enter_context(contextlib.closing(_Stop(_replica(f)))) for f in folders]
        targets = [r.server.target for r in replicas]
        clients = {
            count: stack.enter_context(Client(targets[:count], timeout=1800))
            for count in range(1, max_replicas + 1)
        }
        model_id = clients[max_replicas].upload(module)
        for client in clients.values():  # warm: load the model, measure its costs
            client.jacobian(model_id, x, stream=False, shards=1)
        times: dict[int, list[float]] = defaultdict(list)
        explained: dict[int, list[float]] = defaultdict(list)
        windows: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
        for _ in range(rounds):
            for count, client in clients.items():
                began = time.perf_counter()
                if count == 1:
                    result = client.jacobian(model_id, x, stream=False, shards=1)
                else:
                    result = client.jacobian(model_id, x, shards=count)
                times[count].append(time.perf_counter() - began)
                assert torch.allclose(result.jacobian, reference, rtol=1e-4, atol=1e-5)
                if result.shards:
                    explained[count].append(_critical_path(result))
                    windows[count] += [
                        (s.stop - s.start, s.seconds, s.server_seconds) for s in result.shards
                    ]
                mode, passes = result.metrics.mode, result.metrics.passes
        # Uncontended windows: lanes over one server with one worker run one at a time.
        calibration: list[tuple[int, float]] = []
        for lanes in (2, 3, 6):
            for _ in range(rounds):
                result = clients[1].jacobian(model_id, x, shards=lanes)
                calibration += [(s.stop - s.start, s.server_seconds) for s in result.shards]
        plan_seconds = _plan_seconds(targets[0], model_id, x, rounds)
    a, b = _fit(calibration)
    transfer = (
        statistics.median(
            (seconds - server) / k for rows in windows.values() for k, seconds, server in rows
        )
        if windows
        else 0.0
    )
    return {
        "n": n,
        "hidden": hidden,
        "mode": mode,
        "passes": passes,
        "rounds": rounds,
        "measured": {c: statistics.median(t) for c, t in times.items()},
        "critical_path": {c: statistics.median(t) for c, t in explained.items()},
        "windows": {c: len(rows) // rounds for c, rows in windows.items()},
        "fit": (a, b),
        "transfer_per_pass": max(0.0, transfer),
        "plan_seconds": plan_seconds,
        "assembly_seconds": _assembly_seconds(n, n, rounds),
    }


def _plan_seconds(target: str, model_id: str, x: torch.Tensor, rounds: int) -> float:
    """Wall time of the plan call (``PassRange [0, 0)``) the client makes first."""
    request = pb.JacobianRequest(
        function=pb.FunctionRef(model_id=model_id, method="forward"),
        inputs=encode_tensors([x]),
        passes=pb.PassRange(start=0, stop=0),
    )
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.JacobianServiceStub(channel)
        seconds = []
        for _ in range(rounds):
            began = time.perf_counter()
            stub.Jacobian(request, timeout=600)
            seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def _assembly_seconds(m: int, n: int, rounds: int) -> float:
    """The client's copies: windows into an m × n matrix, then the blocks cut from it."""
    rows = torch.randn(m, n)
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        matrix = torch.empty(m, n)
        matrix[:, :] = rows
        matrix.reshape(m, n).clone()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


class _Stop:
    """``contextlib.closing`` adapter for a running server."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    def close(self) -> None:
        self.server.stop(grace=0)


def model_time(found: dict, machines: int) -> float:
    """Predicted wall time on ``machines`` separate replicas (one lane each)."""
    from jacserve.client._sharding import split_passes

    a, b = found["fit"]
    if machines == 1:
        return a + b * found["passes"]  # one call, no windows
    windows = split_passes(found["passes"], machines, found["passes"])
    per_lane = math.ceil(len(windows) / machines)
    size = windows[0][1] - windows[0][0]
    window = a + b * size + found["transfer_per_pass"] * size
    return found["plan_seconds"] + per_lane * window + found["assembly_seconds"]


def _plot(found: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    counts = sorted(found["measured"])
    axes.plot(
        counts,
        [found["measured"][c] for c in counts],
        "o-",
        label="measured: replicas on this 2-core machine",
    )
    machines = list(range(1, 9))
    axes.plot(
        machines,
        [model_time(found, r) for r in machines],
        "s--",
        label="model: one replica per machine",
    )
    single = model_time(found, 1)
    axes.plot(machines, [single / r for r in machines], ":", color="grey", label="ideal 1/R")
    axes.set_xlabel("replicas")
    axes.set_ylabel("seconds per Jacobian")
    axes.set_title(f"{found['passes']} {found['mode']} passes, n = m = {found['n']}")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _markdown(found: dict) -> str:
    a, b = found["fit"]
    lines = [
        "## Scale-out of one Jacobian across replicas (`python bench/scaleout.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; {datetime.date.today().isoformat()}. Model: n = m = "
        f"{found['n']}, hidden {found['hidden']} ({found['passes']} {found['mode']} passes, "
        f"float32); each replica one worker with one torch thread; median of "
        f"{found['rounds']} interleaved rounds.",
        "",
        "| replicas | measured on this machine (s) | vs 1 | windows | plan + critical path + assembly (s) | model, separate machines (s) | vs 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    one, model_one = found["measured"][1], model_time(found, 1)
    for count in sorted(found["measured"]):
        path = found["critical_path"].get(count)
        fixed = found["plan_seconds"] + found["assembly_seconds"]
        explained = f"{path + fixed:.3f}" if path is not None else "—"
        lines.append(
            f"| {count} | {found['measured'][count]:.3f} | {found['measured'][count] / one:.2f}× | "
            f"{found['windows'].get(count, 1)} | {explained} | {model_time(found, count):.3f} | "
            f"{model_time(found, count) / model_one:.2f}× |"
        )
    for count in (4, 8):
        lines.append(
            f"| {count} | — | — | — | — | {model_time(found, count):.3f} | "
            f"{model_time(found, count) / model_one:.2f}× |"
        )
    lines += [
        "",
        f"Window cost fitted on uncontended windows (one server, one at a time): "
        f"t(k) = {a * 1e3:.1f} ms + {b * 1e3:.3f} ms × k passes; transfer and encoding "
        f"{found['transfer_per_pass'] * 1e6:.1f} µs per pass (client minus server time); "
        f"plan call {found['plan_seconds'] * 1e3:.1f} ms; assembly "
        f"{found['assembly_seconds'] * 1e3:.1f} ms. The critical path is the slowest lane's "
        "windows by client time; plan + critical path + assembly should explain the "
        "measured time (it checks the model's composition), and the model then replaces "
        "the contended windows by the fitted uncontended ones, one machine per lane.",
        "",
        f"Reading: on this machine 2 replicas take {found['measured'][2] / one:.2f}× the time of "
        "one (each replica's worker has a core of its own) and 3 replicas "
        f"{found['measured'][3] / one:.2f}× (three workers and the client share two cores); "
        "the windows' critical path explains the measured times. On separate machines the "
        "model predicts the speed-up flattening at 8 replicas "
        f"({model_time(found, 8) / model_one:.2f}×, ideal 0.12×): each lane pays the fixed "
        f"cost of {WINDOWS} windows ({a * 1e3:.0f} ms each: the request, a forward "
        "evaluation, encoding) and the plan call, which fewer, larger windows per lane "
        "would trade against retry granularity.",
        "",
        "![scale-out](bench/results/scaleout.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, one round, no files")
    args = parser.parse_args()
    if args.quick:
        found = run(n=200, hidden=400, rounds=1, max_replicas=3)
        print({k: v for k, v in found.items()})
        return
    found = run(n=2000, hidden=12000, rounds=5, max_replicas=3)
    RESULTS.mkdir(exist_ok=True)
    _plot(found, RESULTS / "scaleout.png")
    (RESULTS / "scaleout.md").write_text(_markdown(found))
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from suite import write_benchmarks

    write_benchmarks()
    print(_markdown(found))


if __name__ == "__main__":
    main()
