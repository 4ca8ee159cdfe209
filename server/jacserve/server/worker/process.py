"""A worker process: the only place user code (archives) is loaded and run.

Started by :class:`~jacserve.server.worker.pool.WorkerPool` as
``python -m jacserve.server.worker.process FD SETTINGS_JSON``, where ``FD`` is its end of
a ``SOCK_SEQPACKET`` socket pair. It imports torch, confines itself
(:mod:`~jacserve.server.worker.sandbox`), says ``ready`` and then answers one request at a
time until the socket closes. Replies are ``{"ok": true, ...}`` with the serialized
response in shared memory, or ``{"ok": false, "error": CLASS, "message": TEXT}``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from jacserve.codec import TensorCodecError
from jacserve.server import errors
from jacserve.server.allocator import keep_freed_memory
from jacserve.server.engine._function import is_allocation_failure
from jacserve.server.engine.compiled import ProgramCompiler
from jacserve.server.logs import configure_logging
from jacserve.server.registry import ModelRegistry, OperatorAllowlist
from jacserve.server.worker.cpu_budget import CpuBudget
from jacserve.server.worker.handlers import DerivativeHandlers, HandlerSettings
from jacserve.server.worker.operations import DERIVATIVE_REQUESTS, STREAMING_REQUESTS
from jacserve.server.worker.protocol import Channel
from jacserve.server.worker.sandbox import SandboxSettings, apply_sandbox
from jacserve.server.worker.settings import WorkerSettings
from jacserve.v1 import jacobian_service_pb2 as pb

__all__ = ["main", "run_worker"]

_LOG = logging.getLogger("jacserve.worker")


def _build(settings: WorkerSettings, compiler: ProgramCompiler | None) -> DerivativeHandlers:
    extra = settings.allow_ops
    allowlist = (
        OperatorAllowlist.from_file(settings.op_allowlist, extra)
        if settings.op_allowlist
        else OperatorAllowlist.default(extra)
    )
    registry = ModelRegistry(
        settings.model_dir,
        max_archive_bytes=settings.max_archive_bytes,
        max_loaded_bytes=settings.max_loaded_bytes,
        device=settings.device,
        compiler=compiler,
        compile_after=settings.compile_after,
        allowlist=allowlist,
    )
    return DerivativeHandlers(
        registry,
        HandlerSettings(
            max_tensor_elements=settings.max_tensor_elements,
            max_message_bytes=settings.max_message_bytes,
            max_memory_bytes=settings.max_memory_bytes,
            device=settings.device,
            memory_meter=settings.memory_meter,
        ),
    )


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.JacserveError):
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, TensorCodecError):
        return {"ok": False, "error": "InvalidArgument", "message": str(exc)}
    text = str(exc)
    if is_allocation_failure(exc):  # outside model calls too (loading, encoding)
        return {
            "ok": False,
            "error": "ResourceExhausted",
            "message": "the model ran out of memory in its worker (the per-worker memory "
            "limit is --worker-memory-bytes); use smaller inputs or a memory budget "
            f"(options.max_memory_bytes): {text.splitlines()[0][:200] if text else type(exc).__name__}",
        }
    _LOG.exception("request failed unexpectedly")
    return {"ok": False, "error": "Internal", "message": f"{type(exc).__name__} in the worker"}


def _answer(handlers: DerivativeHandlers, header: dict[str, Any], payload: bytes | None) -> Any:
    op = header.get("op")
    if op == "describe":
        return handlers.describe(str(header["model_id"]))
    if op in STREAMING_REQUESTS and payload is not None:
        request = STREAMING_REQUESTS[str(op)].FromString(payload)
        return handlers.stream_jacobian(request, float(header["deadline"]))
    request_type = DERIVATIVE_REQUESTS.get(str(op))
    if request_type is None or payload is None:
        raise errors.InvalidArgument(f"unknown worker operation {op!r}")
    return handlers.handle(str(op), request_type.FromString(payload), float(header["deadline"]))


def run_worker(channel: Channel, settings: WorkerSettings) -> None:
    """Serve requests from ``channel`` until it closes."""
    compiler = ProgramCompiler() if settings.compile == "on" else None
    handlers = _build(settings, compiler)
    budget = CpuBudget(settings.cpu_seconds, compiler.cpu_seconds if compiler else float)
    channel.send({"ready": True, "pid": os.getpid()})
    while True:
        try:
            header, payload = channel.receive(max_payload_bytes=settings.max_message_bytes)
        except EOFError:
            return
        with budget.request():
            try:
                answer = _answer(handlers, header, payload)
                if isinstance(answer, Iterator):
                    reply, body = {"ok": True, **_labels(_send_parts(channel, answer))}, None
                else:
                    reply = {"ok": True, **_labels(getattr(answer, "metrics", None))}
                    body = answer.SerializeToString()
            except Exception as exc:
                reply, body = _error(exc), None
        channel.send(reply, body)


def _send_parts(channel: Channel, parts: Iterator[Any]) -> Any:
    """Send a stream's parts one message each; returns the metrics part's metrics."""
    metrics = None
    message = next(parts, None)
    while message is not None:
        following = next(parts, None)
        last = following is None
        channel.send({"ok": True, "more": True, "last": last}, message.SerializeToString())
        part = message.WhichOneof("part")
        if part == "metrics":
            metrics = message.metrics
        elif part == "complete":
            metrics = message.complete.metrics
        if not last:  # the arena is shared: write the next part once this one was read
            channel.receive(max_payload_bytes=0)
        message = following
    return metrics


def _labels(metrics: Any) -> dict[str, Any]:
    """Mode and passes of a response, for the frontend's log line and metrics."""
    if metrics is None:
        return {}
    mode = "forward" if metrics.mode == pb.DERIVATIVE_MODE_FORWARD else "reverse"
    return {"mode": mode, "passes": metrics.passes}


def _prefer_as_oom_victim() -> None:
    """Under memory pressure (a container at its limit) the kernel should kill a worker,
    which costs one request, rather than the frontend, which costs all of them."""
    # Linux only; raising one's own score needs no privilege
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
        score.write("900")


def _warm_up() -> None:
    """Pay torch's lazy imports before the first request does.

    Calling a TorchScript module imports ``torch._dynamo`` and the first forward-mode
    pass imports the decompositions: 1.5 CPU seconds on the first request of every
    worker (measured on the 2-core CI machine), which also counted against
    ``--worker-cpu-seconds``. Forward and reverse Jacobians of ``tanh`` take both paths.
    """
    import torch._dynamo  # the first module call imports it otherwise

    point = torch.ones(2)
    torch.func.jacfwd(torch.tanh)(point)
    torch.func.jacrev(torch.tanh)(point)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m jacserve.server.worker.process FD SETTINGS_JSON``."""
    fd_text, settings_json = (argv or sys.argv[1:])[:2]
    settings = WorkerSettings.from_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    channel = Channel(socket.socket(fileno=int(fd_text)))
    if settings.allocator == "keep":
        keep_freed_memory()
    torch.set_num_threads(max(1, settings.torch_threads))
    os.makedirs(settings.scratch_dir, exist_ok=True)
    _prefer_as_oom_victim()
    _warm_up()
    if settings.sandbox:
        gpus = tuple(glob.glob("/dev/nvidia*"))  # requests may pick a GPU (options.device)
        applied = apply_sandbox(
            SandboxSettings(
                # CUDA reserves vast address space: no RLIMIT_AS on a machine with GPUs
                memory_bytes=0 if gpus else settings.memory_limit_bytes,
                open_files=settings.open_files,
                scratch_dir=settings.scratch_dir,
                read_dirs=(settings.model_dir,),
                device_files=gpus,
            )
        )
        _LOG.info("sandbox: %s", "; ".join(f"{k}: {v}" for k, v in applied.items()))
    started = time.perf_counter()
    run_worker(channel, settings)
    _LOG.debug("worker exits after %.1fs", time.perf_counter() - started)


if __name__ == "__main__":
    main()
