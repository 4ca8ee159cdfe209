"""What a small remote derivative costs above a local one, and where the difference goes.

Usage:
    python bench/request_path.py            # full run: writes bench/results/request-path.md
                                            # and regenerates BENCHMARKS.md (about a minute)
    python bench/request_path.py --quick    # a few seconds, writes nothing (CI smoke run)

Issue #13, target 1: a small JVP, VJP and 100×100 Jacobian (MLP 100→128→100, float32)
through the SDK against a **default** server started as its own process, against the same
derivative by ``torch.func`` in this process (with the thread count the server's worker
uses for a short request) plus a bare gRPC echo server (its own process) answering the
same request bytes with as many response bytes. Target: SDK p50 ≤ local + echo + 0.3 ms,
p99 ≤ 2 × p50. Every variant runs once per round, interleaved, so the shared machine's
noise moves all of them alike.

The breakdown splits the SDK's time: the SDK itself (SDK − the same request sent by a raw
generated stub), the frontend and the hop to the worker (stub − echo − the worker's
``metrics.timing.total_seconds``), the worker's bookkeeping (its total − the local
derivative) and the local derivative.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import grpc
import torch

from jacserve.client import Client
from jacserve.codec import encode_tensors
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from models import Mlp

warnings.filterwarnings("ignore")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
_LIMITS = [("grpc.max_send_message_length", 1 << 29), ("grpc.max_receive_message_length", 1 << 29)]
_ECHO = """
import sys, grpc
from concurrent import futures
size = int(sys.argv[1])
reply = bytes(size)
handler = grpc.method_handlers_generic_handler(
    "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: reply)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
    ("grpc.max_send_message_length", 1 << 29), ("grpc.max_receive_message_length", 1 << 29)])
server.add_generic_rpc_handlers((handler,))
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(folder: str, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """A default ``jacserve serve`` in its own process (only the ports and folder chosen,
    and any ``flags`` given)."""
    port, metrics = _free_port(), _free_port()
    command = [sys.executable, "-m", "jacserve.server", "--port", str(port)]
    command += ["--metrics-port", str(metrics), "--model-dir", folder, "--log-level", "WARNING"]
    command += list(flags)
    process = subprocess.Popen(command)
    return process, f"127.0.0.1:{port}"


def start_echo(response_bytes: int) -> tuple[subprocess.Popen[str], str]:
    """A bare gRPC server in its own process answering ``response_bytes`` zero bytes."""
    process = subprocess.Popen(
        [sys.executable, "-c", _ECHO, str(response_bytes)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, f"127.0.0.1:{process.stdout.readline().strip()}"


SMALL_CASES = ("JVP", "VJP", "100×100 Jacobian")
LARGE_CASE = "2000×2000 Jacobian"


def _cases(client: Client, raw: pb_grpc.JacobianServiceStub) -> list[tuple[str, Any, Any, Any]]:
    """(case, SDK call, raw stub call of the same request, local call) for each case."""
    torch.manual_seed(0)
    model = Mlp(100, 100, hidden=128).eval()  # 100 → 128 (tanh) → 100, float32
    big = torch.nn.Linear(2000, 2000).eval()  # its Jacobian: 2000 × 2000 float32, 16 MB
    x, v, u, big_x = torch.randn(100), torch.randn(100), torch.randn(100), torch.randn(2000)
    small_id = client.upload(torch.export.export(model, (x,)))
    big_id = client.upload(torch.export.export(big, (big_x,)))
    ref, big_ref = (pb.FunctionRef(model_id=i, method="forward") for i in (small_id, big_id))
    jacrev, jacrev_big, wire = torch.func.jacrev(model), torch.func.jacrev(big), encode_tensors

    def stub(rpc: str, message: Any) -> Any:
        return functools.partial(getattr(raw, rpc), message, timeout=600)

    return [
        ("JVP", lambda: client.jvp(small_id, x, v),
         stub("Jvp", pb.JvpRequest(function=ref, primals=wire([x]), tangents=wire([v]))),
         lambda: torch.func.jvp(model, (x,), (v,))),
        ("VJP", lambda: client.vjp(small_id, x, u),
         stub("Vjp", pb.VjpRequest(function=ref, primals=wire([x]), cotangents=wire([u]))),
         lambda: torch.func.vjp(model, x)[1](u)),
        ("100×100 Jacobian", lambda: client.jacobian(small_id, x),
         stub("Jacobian", pb.JacobianRequest(function=ref, inputs=wire([x]))),
         lambda: jacrev(x)),
        (LARGE_CASE, lambda: client.jacobian(big_id, big_x),
         stub("Jacobian", pb.JacobianRequest(function=big_ref, inputs=wire([big_x]))),
         lambda: jacrev_big(big_x)),
    ]  # fmt: skip


def measure(target: str, rounds: int, large_rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of every variant of every case, interleaved call by call; the
    worker's own time per request under ``worker``."""
    results: dict[str, dict[str, list[float]]] = {}
    with Client(target, timeout=600) as client:
        raw = pb_grpc.JacobianServiceStub(grpc.insecure_channel(target, options=_LIMITS))
        for name, sdk, stub, local in _cases(client, raw):
            reply = stub() if name != LARGE_CASE else _settled(stub)
            small = name != LARGE_CASE  # the local run gets the worker's threads; a
            threads = reply.metrics.threads if small else torch.get_num_threads()  # large one all
            echo_process, echo_target = start_echo(reply.ByteSize())
            try:
                with grpc.insecure_channel(echo_target, options=_LIMITS) as channel:
                    request = stub.args[0].SerializeToString()
                    call = channel.unary_unary("/bench.Echo/Call")
                    echo = functools.partial(call, request, timeout=600)
                    variants = {"sdk": sdk, "stub": stub, "echo": echo, "local": local}
                    count = rounds if small else large_rounds
                    results[name] = _interleave(variants, count, threads or 1)
            finally:
                echo_process.kill()
    return results


def _settled(stub: Callable[[], Any], most_seconds: float = 600.0) -> Any:
    """The stub's reply once the server's background compile of this request has ended
    (a compile worker shares the cores; a default server starts one after two eager
    Jacobians of a signature), or after ``most_seconds``."""
    ended = time.monotonic() + most_seconds
    reply = stub()
    while reply.metrics.compilation.startswith(("counting", "requested")):
        if time.monotonic() > ended:
            break
        time.sleep(1.0)
        reply = stub()
    print(f"# {LARGE_CASE}: {reply.metrics.execution_path}, {reply.metrics.compilation!r}")
    return reply


def _interleave(
    variants: dict[str, Callable[[], Any]], rounds: int, threads: int
) -> dict[str, list[float]]:
    """Each variant once per round (``local`` with ``threads``); ``worker``: the server's
    own time for the stub's request."""
    samples: dict[str, list[float]] = {name: [] for name in [*variants, "worker"]}
    before = torch.get_num_threads()
    for fn in variants.values():
        for _ in range(min(rounds, 20)):  # warm every path
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            torch.set_num_threads(threads if name == "local" else before)
            started = time.perf_counter()
            reply = fn()
            samples[name].append(time.perf_counter() - started)
            if name == "stub":
                samples["worker"].append(reply.metrics.timing.total_seconds)
    torch.set_num_threads(before)
    return samples


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def report(results: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: each case against its target, and where the SDK's p50 goes."""
    lines = [
        "| case | SDK p50 ms | SDK p99 ms | local torch.func ms | echo ms | SDK − (local + echo) "
        "| SDK / (local + echo) | target | met | p99 / p50 (≤ 2) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    breakdown = [
        "| case | local derivative | worker bookkeeping | frontend + hop to the worker "
        "(beyond an echo) | gRPC echo | SDK over a raw stub | SDK total |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, samples in results.items():
        p50 = {name: statistics.median(values) for name, values in samples.items()}
        p99 = _percentile(samples["sdk"], 0.99)
        floor = p50["local"] + p50["echo"]
        over, ratio = p50["sdk"] - floor, p50["sdk"] / floor
        goal, met = (
            ("≤ 1.25×", ratio <= 1.25) if case == LARGE_CASE else ("≤ +0.3 ms", over <= 3e-4)
        )
        lines.append(
            f"| {case} | {_ms(p50['sdk'])} | {_ms(p99)} | {_ms(p50['local'])} | "
            f"{_ms(p50['echo'])} | {over * 1e3:+.3f} ms | {ratio:.2f}× | {goal} | "
            f"{'yes' if met else '**no**'} | {p99 / p50['sdk']:.2f} |"
        )
        breakdown.append(
            f"| {case} | {_ms(p50['local'])} | {_ms(p50['worker'] - p50['local'])} | "
            f"{_ms(p50['stub'] - p50['echo'] - p50['worker'])} | {_ms(p50['echo'])} | "
            f"{_ms(p50['sdk'] - p50['stub'])} | {_ms(p50['sdk'])} |"
        )
    return "\n".join([*lines, "", "Where the SDK's p50 goes (ms):", "", *breakdown])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server, target = start_server(folder)
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=120)
            results = measure(target, 30 if args.quick else 400, 2 if args.quick else 12)
        finally:
            server.terminate()
            server.wait(30)
    stamp = time.strftime("%Y-%m-%d")
    text = (
        f"## A small request, remote against local (`python bench/request_path.py`)\n\n"
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, Python "
        f"{sys.version.split()[0]}; {stamp}. SDK → a default server in its own "
        f"process; local torch.func with the worker's thread count.\n\n{report(results)}\n"
    )
    print(text)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "request-path.md").write_text(text)
        from suite import write_benchmarks  # bench/ is on sys.path when run as a script

        write_benchmarks()


if __name__ == "__main__":
    main()
