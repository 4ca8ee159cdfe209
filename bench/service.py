"""What worker isolation costs and what worker processes buy: latency and throughput.

Usage:
    python bench/service.py            # full run: writes bench/results/service.md and
                                       # regenerates BENCHMARKS.md (about a minute)
    python bench/service.py --quick    # a few seconds, writes nothing (CI smoke run)

Per-archive workers: uploads of new archives on a default server (each forks a confined
worker from the zygote and loads the archive there), the first JVP after each, the
memory a warm worker adds beside the zygote, and a fresh interpreter's start for scale.
Isolation: one small JVP (Linear(4, 3) + tanh) end to end through the SDK, against a
gRPC server that runs the same handler in its own threads (no isolation, the design
before worker processes) and against jacserve (frontend + worker process + shared
memory), interleaved in rounds. Throughput:
the same JVP from 1 and from 8 client processes for a fixed time against one server with
one worker per core; the ratio is the figure (the issue asks ≥ 1.6× on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import io
import multiprocessing
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import warnings
from concurrent import futures

import grpc
import torch

from jacserve.client import Client
from jacserve.codec import encode_tensors
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig
from jacserve.server.registry import ArchiveRegistry
from jacserve.server.worker.handlers import DerivativeHandlers, HandlerSettings
from jacserve.v1 import jacobian_service_pb2 as pb

warnings.filterwarnings("ignore")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _model_archive(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _request(model_id: str) -> bytes:
    x = torch.randn(4)
    return pb.JvpRequest(
        function=pb.FunctionRef(model_id=model_id),
        primals=encode_tensors([x]),
        tangents=encode_tensors([x]),
    ).SerializeToString()


def _p50_ms(call, repeats: int) -> float:
    for _ in range(repeats // 5):
        call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


class _InProcessJvp:
    """The baseline: a gRPC server that runs the worker's handler in its own threads,
    with no isolation at all (what jacserve did before it had worker processes)."""

    def __init__(self, handlers: DerivativeHandlers) -> None:
        self._handlers = handlers
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        method = grpc.unary_unary_rpc_method_handler(
            self._jvp, request_deserializer=pb.JvpRequest.FromString, response_serializer=bytes
        )
        service = pb.DESCRIPTOR.services_by_name["JacobianService"].full_name
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Jvp": method}),)
        )
        self.target = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def _jvp(self, request: pb.JvpRequest, context: grpc.ServicerContext) -> bytes:
        return self._handlers.handle("Jvp", request, time.monotonic() + 60).SerializeToString()

    def stop(self) -> None:
        self._server.stop(0)


def _baseline(archive: bytes) -> tuple[_InProcessJvp, str]:
    torch.set_num_threads(1)  # as a worker on a 2-core machine with 2 workers
    registry = ArchiveRegistry(archive)
    model_id = registry.model_id
    handlers = DerivativeHandlers(
        registry, HandlerSettings(max_tensor_elements=1 << 28, max_message_bytes=1 << 29)
    )
    return _InProcessJvp(handlers), model_id


def isolation(archive: bytes, repeats: int) -> dict[str, float]:
    """p50 of the same JVP end to end against an in-process server and against jacserve."""
    baseline, model_id = _baseline(archive)
    running = serve(ServerConfig(port=0, metrics_port=None, compile="off", workers=1))
    try:
        with Client(running.target, timeout=60) as isolated, Client(baseline.target) as direct:
            isolated.upload(archive)
            x = torch.randn(4)
            rounds: dict[str, list[float]] = {"in_process": [], "isolated": []}
            for _ in range(5):  # interleaved rounds: drifts of a shared machine hit both alike
                rounds["in_process"].append(_p50_ms(lambda: direct.jvp(model_id, x, x), repeats))
                rounds["isolated"].append(_p50_ms(lambda: isolated.jvp(model_id, x, x), repeats))
    finally:
        running.stop(grace=0)
        baseline.stop()
    return {k: statistics.median(v) for k, v in rounds.items()}


def _smaps_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and private (unshared) KiB of a process, from ``smaps_rollup``."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "private": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def _parent(pid: int) -> int:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _fresh_interpreter_seconds() -> float:
    """A worker started the way they were before the zygote: a new interpreter that
    imports torch and pays its lazy imports."""
    began = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "from jacserve.server.worker.zygote import warm_up; warm_up()",
        ],
        check=True,
    )
    return time.perf_counter() - began


def per_archive_workers(models: int) -> dict[str, float]:
    """What one confined worker per archive costs on a default server: the upload of a
    new archive (fork from the zygote, confinement, load and check), its first JVP, and
    the memory each warm worker adds; a fresh interpreter's start beside it."""
    running = serve(ServerConfig(port=0, metrics_port=None, log_level="WARNING"))
    uploads, firsts, fresh = [], [], []
    try:
        with Client(running.target, timeout=120) as client:
            x = torch.randn(4)
            for seed in range(models):
                archive = _model_archive(seed)
                began = time.perf_counter()
                model_id = client.upload(archive)
                uploads.append(time.perf_counter() - began)
                began = time.perf_counter()
                client.jvp(model_id, x, x)
                firsts.append(time.perf_counter() - began)
                fresh.append(_fresh_interpreter_seconds())
        pids = running.pool.pids()
        memory = [_smaps_kib(pid) for pid in pids]
        zygote = _smaps_kib(_parent(pids[0]))
    finally:
        running.stop(grace=0)
    return {
        "workers": len(pids),
        "upload_ms": statistics.median(uploads) * 1e3,
        "first_jvp_ms": statistics.median(firsts) * 1e3,
        "fresh_interpreter_ms": statistics.median(fresh) * 1e3,
        "worker_private_mib": statistics.median(m["private"] for m in memory) / 1024,
        "worker_pss_mib": statistics.median(m["pss"] for m in memory) / 1024,
        "worker_rss_mib": statistics.median(m["rss"] for m in memory) / 1024,
        "zygote_rss_mib": zygote["rss"] / 1024,
    }


def _client_loop(target: str, model_id: str, seconds: float, barrier, out) -> None:
    with Client(target, timeout=60) as client:
        x = torch.randn(4)
        for _ in range(20):  # warm: connection, the worker's model cache
            client.jvp(model_id, x, x)
        barrier.wait()  # every client starts together, after all have imported and connected
        done, stop_at = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            client.jvp(model_id, x, x)
            done += 1
    out.put(done)


def _rate(target: str, model_id: str, count: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    out, barrier = context.Queue(), context.Barrier(count)
    processes = [
        context.Process(target=_client_loop, args=(target, model_id, seconds, barrier, out))
        for _ in range(count)
    ]
    for p in processes:
        p.start()
    total = sum(out.get(timeout=300) for _ in processes)
    for p in processes:
        p.join()
    return total / seconds


def throughput(archive: bytes, rounds: int, seconds: float) -> list[tuple[float, float, float]]:
    """Requests/s of jacserve with 1 and 8 client processes, and of the in-process
    baseline with 8, measured back to back in each round."""
    running = serve(ServerConfig(port=0, metrics_port=None, compile="off", log_level="WARNING"))
    baseline, _ = _baseline(archive)
    try:
        with Client(running.target) as client:
            model_id = client.upload(archive)
        return [
            (
                _rate(running.target, model_id, 1, seconds),
                _rate(running.target, model_id, 8, seconds),
                _rate(baseline.target, model_id, 8, seconds),
            )
            for _ in range(rounds)
        ]
    finally:
        running.stop(grace=0)
        baseline.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, writes nothing")
    args = parser.parse_args()
    archive = _model_archive()
    latency = isolation(archive, repeats=50 if args.quick else 400)
    rates = throughput(archive, rounds=1 if args.quick else 5, seconds=1.0 if args.quick else 5.0)
    workers = per_archive_workers(models=2 if args.quick else 6)
    cost = latency["isolated"] - latency["in_process"]
    ratios = [eight / one for one, eight, _ in rates]
    ratio = statistics.median(ratios)
    lines = [
        "## Service: isolation cost and throughput",
        "",
        f"{datetime.date.today()} · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores · torch {torch.__version__} · Python {sys.version.split()[0]}",
        "",
        "Small JVP (Linear(4, 3) + tanh) end to end through the SDK, median of the p50s of "
        "5 interleaved rounds:",
        "",
        "| path | p50 (ms) |",
        "|---|---|",
        f"| gRPC server running the handler in-process (no isolation) | {latency['in_process']:.3f} |",
        f"| jacserve: frontend → worker process via shared memory | {latency['isolated']:.3f} |",
        "",
        f"**Isolation cost: {cost:.3f} ms p50** (target ≤ 0.5 ms).",
        "",
        f"One confined worker per archive, default server settings, {workers['workers']:.0f} "
        "archives uploaded one after another (medians):",
        "",
        "| figure | value |",
        "|---|---|",
        f"| upload of a new archive: fork from the zygote, confine, load, check, describe | "
        f"{workers['upload_ms']:.1f} ms |",
        f"| its first JVP (after the upload) | {workers['first_jvp_ms']:.1f} ms |",
        f"| a fresh interpreter importing torch, the way workers started before the zygote | "
        f"{workers['fresh_interpreter_ms']:.0f} ms |",
        f"| memory a warm worker adds (private pages, not shared with the zygote) | "
        f"{workers['worker_private_mib']:.1f} MiB |",
        f"| a warm worker's proportional share (PSS) / resident set (RSS) | "
        f"{workers['worker_pss_mib']:.1f} / {workers['worker_rss_mib']:.1f} MiB |",
        f"| the zygote (torch imported once, shared by every worker) | "
        f"{workers['zygote_rss_mib']:.0f} MiB RSS |",
        "",
        "Throughput, small JVPs from client processes on the same machine, 1 then 8 clients "
        "in each round:",
        "",
        "| round | 1 client (req/s) | 8 clients (req/s) | ratio | in-process baseline, 8 clients (req/s) |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {one:.0f} | {eight:.0f} | {eight / one:.2f} | {base:.0f} |"
            for i, (one, eight, base) in enumerate(rates)
        ),
        "",
        f"**8 clients / 1 client: {ratio:.2f}× (median; range {min(ratios):.2f}–{max(ratios):.2f})** "
        "(target ≥ 1.6× on 2 cores; the 8 client processes share the 2 cores with the "
        "frontend and the 2 workers).",
        "",
    ]
    print("\n".join(lines))
    if not args.quick:
        from suite import write_benchmarks  # bench/ is on sys.path when run as a script

        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "service.md").write_text("\n".join(lines))
        write_benchmarks()


if __name__ == "__main__":
    main()
