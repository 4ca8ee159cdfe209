"""Running a server: ``jacserve serve`` and :func:`serve` for programs and tests.

>>> from jacserve.server.config import ServerConfig
>>> running = serve(ServerConfig(port=0, metrics_port=None))
>>> running.port > 0
True
>>> running.stop()
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jacserve.server.allocator import keep_freed_memory
from jacserve.server.config import (
    DESCRIPTION,
    EPILOG,
    ServerConfig,
    add_server_flags,
    config_from_flags,
)
from jacserve.server.engine.compiled import ProgramCompiler
from jacserve.server.metrics import ServiceMetrics
from jacserve.server.registry import ModelRegistry
from jacserve.server.service import JacobianServicer
from jacserve.v1 import jacobian_service_pb2 as pb
from jacserve.v1 import jacobian_service_pb2_grpc as pb_grpc

__all__ = ["RunningServer", "main", "serve"]

_LOG = logging.getLogger("jacserve.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["JacobianService"].full_name


@dataclass
class RunningServer:
    """A started server: where it listens and how to stop it."""

    config: ServerConfig
    port: int
    metrics_port: int | None
    registry: ModelRegistry
    compiler: ProgramCompiler | None
    _grpc_server: grpc.Server
    _health: health.HealthServicer
    _metrics_http: Any
    _temporary_dir: str | None

    @property
    def target(self) -> str:
        """``host:port`` for clients on this machine."""
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "[::]") else self.config.host
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for ``grace`` seconds, then stop."""
        self._health.enter_graceful_shutdown()
        self._grpc_server.stop(self.config.grace_seconds if grace is None else grace).wait()
        if self.compiler is not None:
            self.compiler.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)

    def wait(self) -> None:
        """Block until the server stops."""
        self._grpc_server.wait_for_termination()


def serve(config: ServerConfig) -> RunningServer:
    """Start a server in background threads and return once it is SERVING.

    Raises:
        RuntimeError: when the port cannot be bound.
    """
    if config.allocator == "keep":
        keep_freed_memory()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    temporary_dir = None
    model_dir = config.model_dir
    if model_dir is None:
        model_dir = temporary_dir = tempfile.mkdtemp(prefix="jacserve-models-")
    compiler = ProgramCompiler() if config.compile == "on" else None
    registry = ModelRegistry(
        model_dir,
        max_archive_bytes=config.max_archive_bytes,
        max_loaded_bytes=config.max_loaded_bytes,
        device=config.device,
        compiler=compiler,
        compile_after=config.compile_after,
    )
    metrics = ServiceMetrics()
    metrics.track_cache(registry.cache_stats)
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="jacserve-rpc"
        ),
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    pb_grpc.add_JacobianServiceServicer_to_server(
        JacobianServicer(
            registry,
            metrics,
            max_tensor_elements=config.max_tensor_elements,
            max_message_bytes=config.max_message_bytes,
            max_memory_bytes=config.max_memory_bytes,
            device=config.device,
            memory_meter=config.memory_meter,
        ),
        server,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = (
        f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address}: {exc}") from exc
    metrics_http, metrics_port = None, None
    if config.metrics_port is not None:
        metrics_http, metrics_port = metrics.serve_http(config.host, config.metrics_port)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _LOG.info(
        "serving on %s (metrics port %s, models in %s)",
        address.replace(str(config.port), str(port)),
        metrics_port,
        model_dir,
    )
    return RunningServer(
        config,
        port,
        metrics_port,
        registry,
        compiler,
        server,
        health_servicer,
        metrics_http,
        temporary_dir,
    )


def build_cli() -> argparse.ArgumentParser:
    """The ``jacserve`` command line (``serve`` for now; client commands come later)."""
    parser = argparse.ArgumentParser(
        prog="jacserve", description="Remote differentiation of PyTorch programs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_server_flags(
        commands.add_parser(
            "serve", help="start the gRPC server", description=DESCRIPTION, epilog=EPILOG
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jacserve`` command: ``jacserve serve [flags]``."""
    parser = build_cli()
    flags = vars(parser.parse_args(argv))
    config = config_from_flags(flags, os.environ, parser)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    running = serve(config)
    stopped = threading.Event()

    def shut_down(signum: int, _frame: Any) -> None:
        _LOG.info(
            "received %s; stopping (grace %.1fs)", signal.Signals(signum).name, config.grace_seconds
        )
        stopped.set()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    stopped.wait()
    running.stop()
    return 0
