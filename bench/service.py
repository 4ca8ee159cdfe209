"""What worker isolation costs and what worker processes buy: latency and throughput.

Usage:
    python bench/service.py            # full run: writes bench/results/service.md and
                                       # regenerates BENCHMARKS.md (about a minute)
    python bench/service.py --quick    # a few seconds, writes nothing (CI smoke run)

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
import sys
import tempfile
import time
import warnings
from concurrent import futures

import grpc
import torch

from jacserve.client import Client
from jacserve.codec import encode_tensors
from jacserve.server.app import serve
from jacserve.server.config import ServerConfig
from jacserve.server.registry import ModelRegistry
from jacserve.server.worker.handlers import DerivativeHandlers, HandlerSettings
from jacserve.v1 import jacobian_service_pb2 as pb

warnings.filterwarnings("ignore")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _model_archive() -> bytes:
    torch.manual_seed(0)
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
    registry = ModelRegistry(tempfile.mkdtemp())
    model_id = registry.add(archive)[0].model_id
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
