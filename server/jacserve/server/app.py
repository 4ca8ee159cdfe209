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
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jacserve.server.allocator import return_large_blocks
from jacserve.server.auth import TokenAuthInterceptor, load_tokens, server_credentials
from jacserve.server.config import (
    DESCRIPTION,
    EPILOG,
    ServerConfig,
    add_server_flags,
    config_from_flags,
)
from jacserve.server.logs import configure_logging
from jacserve.server.metrics import ServiceMetrics
from jacserve.server.reflection import enable_reflection
from jacserve.server.registry.objects import parse_store_url
from jacserve.server.registry.shared_store import SharedArchiveStore, open_store
from jacserve.server.registry.store import ArchiveStore
from jacserve.server.resources import available_cpus, available_memory_bytes
from jacserve.server.service import SERVICE_NAME, FrontendSettings, JacobianServicer
from jacserve.server.uploads import total_upload_slots
from jacserve.server.worker.pool import WorkerPool
from jacserve.server.worker.sandbox.identity import make_non_dumpable
from jacserve.server.worker.settings import WorkerSettings

__all__ = ["RunningServer", "main", "serve"]

_LOG = logging.getLogger("jacserve.server")
_MIN_WORKER_MEMORY = 4 << 30


@dataclass
class RunningServer:
    """A started server: where it listens and how to stop it."""

    config: ServerConfig
    port: int
    metrics_port: int | None
    store: ArchiveStore
    pool: WorkerPool
    _grpc_server: grpc.Server
    _health: health.HealthServicer
    _metrics_http: Any
    _temporary_dirs: tuple[str, ...]

    @property
    def target(self) -> str:
        """``host:port`` for clients on this machine."""
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "[::]") else self.config.host
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for ``grace`` seconds, then stop."""
        self._health.enter_graceful_shutdown()
        self._grpc_server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.pool.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        for folder in self._temporary_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    def wait(self) -> None:
        """Block until the server stops."""
        self._grpc_server.wait_for_termination()


def worker_settings(config: ServerConfig, scratch_dir: str) -> WorkerSettings:
    """What each worker process gets, with the automatic sizes resolved.

    >>> settings = worker_settings(ServerConfig(workers=2), "/scratch")
    >>> settings.torch_threads >= 1, settings.memory_limit_bytes >= 4 << 30
    (True, True)
    """
    cpus = available_cpus()
    workers = config.workers or cpus
    memory = available_memory_bytes()
    return WorkerSettings(
        scratch_dir=scratch_dir,
        device=config.device,
        max_archive_bytes=config.max_archive_bytes,
        max_loaded_bytes=config.max_loaded_bytes,
        max_tensor_elements=config.max_tensor_elements,
        max_message_bytes=config.max_message_bytes,
        max_memory_bytes=config.max_memory_bytes,
        memory_meter=config.memory_meter,
        compile=config.compile,
        compile_after=config.compile_after,
        torch_threads=config.torch_threads or max(1, cpus // workers),
        max_threads=config.torch_threads or max(1, cpus),
        allocator=config.allocator,
        op_allowlist=config.op_allowlist,
        allow_ops=tuple(op.strip() for op in config.allow_ops.split(",") if op.strip()),
        memory_limit_bytes=config.worker_memory_bytes or max(_MIN_WORKER_MEMORY, memory // workers),
        cpu_seconds=config.worker_cpu_seconds,
        open_files=config.worker_open_files,
        sandbox=config.sandbox,
        log_level=config.log_level,
        log_format=config.log_format,
    )


def serve(config: ServerConfig, environ: dict[str, str] | None = None) -> RunningServer:
    """Start a server and its workers; return once it is SERVING (workers up, stored
    models checked).

    Raises:
        RuntimeError: when the port cannot be bound or workers cannot start.
    """
    environ = dict(os.environ if environ is None else environ)
    tokens = load_tokens(config.auth_token_file, environ)  # a bad token file stops us first
    return_large_blocks()  # upload chunks go back to the kernel (NOTE: [Returning upload chunks])
    temporary = []
    model_dir = config.model_dir
    scheme, location = parse_store_url(config.model_store) if config.model_store else ("", "")
    if scheme == "file":
        model_dir = location
    if model_dir is None:
        model_dir = tempfile.mkdtemp(prefix="jacserve-models-")
        temporary.append(model_dir)
    scratch_dir = tempfile.mkdtemp(prefix="jacserve-scratch-")
    temporary.append(scratch_dir)
    store = open_store(
        config.model_store,
        model_dir,
        max_archive_bytes=config.max_archive_bytes,
        max_store_bytes=config.max_store_bytes,
        max_models=config.max_models,
        cache_bytes=config.model_cache_bytes,
        ttl_seconds=config.model_store_ttl,
        environ=environ,
    )
    shared = isinstance(store, SharedArchiveStore)
    metrics = ServiceMetrics()
    settings = worker_settings(config, scratch_dir)
    if sys.platform == "linux":
        make_non_dumpable()  # workers of the same uid cannot read our memory or environment
    pool = WorkerPool(
        settings,
        config.workers or available_cpus(),
        max_queue=config.max_queue,
        archive_path=store.worker_path,
        max_warm=config.warm_workers,
        load_seconds=config.load_timeout,
        compile_seconds=config.compile_timeout,
        on_event=metrics.worker_event,
    )
    servicer = JacobianServicer(
        store,
        pool,
        metrics,
        FrontendSettings(
            max_archive_bytes=config.max_archive_bytes,
            max_message_bytes=config.max_message_bytes,
            allow_uploads=config.allow_uploads,
            request_timeout_seconds=config.request_timeout,
            max_call_seconds=config.max_call_seconds,
            upload_idle_seconds=config.upload_idle_seconds,
            max_uploads_per_peer=config.max_uploads_per_peer,
            max_uploads=total_upload_slots(config.max_workers),
            tenant_max_models=config.tenant_max_models or None,
            tenant_max_bytes=config.tenant_max_bytes or None,
        ),
        tokens,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="jacserve-rpc"
        ),
        interceptors=[TokenAuthInterceptor(tokens)] if tokens else [],
        options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # the SDK pings idle connections every 60 s; accept that (the default would
            # answer pings more often than every 5 minutes with GOAWAY "too_many_pings")
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    servicer.add_to_server(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    address = (
        f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    )
    try:
        if config.tls_cert_file and config.tls_key_file:
            credentials = server_credentials(
                config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address}: {exc}") from exc
    metrics_http, metrics_port = None, None
    if config.metrics_port is not None:
        metrics_http, metrics_port = metrics.serve_http(config.host, config.metrics_port)
    server.start()  # health answers NOT_SERVING while the workers start
    try:
        pool.start()
    except RuntimeError:
        server.stop(0)
        raise
    failed = [] if shared else servicer.preload()  # a shared store's are described on use
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _LOG.info(
        "serving",
        extra={
            "address": address.replace(str(config.port), str(port)),
            "metrics_port": metrics_port,
            "model_dir": model_dir,
            "model_store": store.bucket.url if shared else f"file://{model_dir}",
            "workers": pool.size,
            "auth": "bearer token" if tokens else "none",
            "tenants": list(tokens.tenants) if tokens else ["default"],
            "tls": "mutual" if config.tls_client_ca_file else bool(config.tls_cert_file),
            "preloaded_models_failed": len(failed),
        },
    )
    return RunningServer(
        config,
        port,
        metrics_port,
        store,
        pool,
        server,
        health_servicer,
        metrics_http,
        tuple(temporary),
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
    configure_logging(config.log_level, config.log_format)
    stopped = threading.Event()

    def shut_down(signum: int, _frame: Any) -> None:
        _LOG.info(
            "received %s; stopping (grace %.1fs)", signal.Signals(signum).name, config.grace_seconds
        )
        stopped.set()

    # before serve(): a signal during start-up (workers starting) still shuts down cleanly
    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    running = serve(config)
    stopped.wait()
    running.stop()
    return 0
