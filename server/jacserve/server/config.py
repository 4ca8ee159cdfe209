"""Server configuration: one frozen object built from flags and ``JACSERVE_*`` variables.

Every flag ``--some-option`` has an environment variable ``JACSERVE_SOME_OPTION``; a
flag given on the command line wins over the variable, which wins over the default.

>>> config = parse_config(["--port", "6000"], environ={"JACSERVE_MAX_WORKERS": "4"})
>>> config.port, config.max_workers, config.host
(6000, 4, '127.0.0.1')
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from jacserve.server.registry.objects import parse_store_url

__all__ = [
    "MIN_CLIENT_PING_INTERVAL_MS",
    "ServerConfig",
    "add_server_flags",
    "config_from_flags",
    "parse_config",
]

MiB = 1 << 20
MIN_CLIENT_PING_INTERVAL_MS = 30_000
"""Clients may ping this often on a connection without data (the SDK pings every 60 s;
gRPC's default, 5 minutes, would answer it with GOAWAY ``too_many_pings``): the default of
``--min-client-ping-interval-ms``, set as ``grpc.http2.min_ping_interval_without_data_ms``
(tests/e2e/test_long_calls.py fails with any other name)."""
GiB = 1 << 30


@dataclass(frozen=True)
class ServerConfig:
    """Settings of a jacserve server (sizes in bytes)."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9464  # None disables the Prometheus endpoint; 0 picks a free port
    max_workers: int = 32
    max_concurrent_rpcs: int = 256
    workers: int = 0  # 0: one per CPU core
    warm_workers: int = 0  # 0: four per --workers
    load_timeout: float = 120.0
    max_queue: int = 64
    max_message_bytes: int = 512 * MiB
    max_archive_bytes: int = 1024 * MiB
    max_store_bytes: int = 20 * GiB
    max_models: int = 1000
    tenant_max_models: int = 0  # 0: no per-tenant cap
    tenant_max_bytes: int = 0  # 0: no per-tenant cap
    upload_idle_seconds: float = 30.0
    max_uploads_per_peer: int = 4
    max_loaded_bytes: int = 4096 * MiB
    max_tensor_elements: int = 1 << 28
    max_memory_bytes: int = 0  # 0: no budget; requests may set their own
    device: str = "cpu"
    memory_meter: str = "rss"
    compile: str = "on"  # "on": build compiled Jacobian programs in compile workers
    compile_after: int = 2
    compile_timeout: float = 600.0
    torch_threads: int = 0  # 0: the cores shared among the requests computing at once
    allocator: str = "keep"  # "keep": glibc keeps freed memory (see NOTE: [Keeping freed memory])
    model_dir: str | None = None  # None: a temporary folder removed at shutdown
    model_store: str | None = None  # None: file:// --model-dir; or s3://BUCKET/PREFIX
    model_cache_bytes: int = 2 * GiB  # local copies of a shared store's archives (LRU)
    model_store_ttl: float = 2.0  # seconds a shared store's answer "still held" is trusted
    request_timeout: float = 300.0
    max_call_seconds: float = 0.0  # 0: no server maximum; else caps every call's deadline
    min_client_ping_interval_ms: int = MIN_CLIENT_PING_INTERVAL_MS
    worker_memory_bytes: int = 0  # 0: physical memory / workers
    worker_cpu_seconds: float = 600.0
    worker_open_files: int = 256
    sandbox: bool = True
    op_allowlist: str | None = None
    allow_ops: str = ""
    allow_uploads: bool = True
    auth_token_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    grace_seconds: float = 5.0
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        for name in (
            "max_workers",
            "max_concurrent_rpcs",
            "max_message_bytes",
            "max_queue",
            "max_store_bytes",
            "max_models",
            "max_uploads_per_peer",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {self.port}")
        if self.memory_meter not in ("rss", "tensors"):
            raise ValueError(f"memory_meter must be 'rss' or 'tensors'; got {self.memory_meter!r}")
        if self.compile not in ("on", "off"):
            raise ValueError(f"compile must be 'on' or 'off'; got {self.compile!r}")
        if self.compile_after < 1:
            raise ValueError(f"compile_after must be >= 1; got {self.compile_after}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0; got {self.torch_threads}")
        if self.allocator not in ("keep", "default"):
            raise ValueError(f"allocator must be 'keep' or 'default'; got {self.allocator!r}")
        for name in (
            "workers",
            "worker_memory_bytes",
            "worker_cpu_seconds",
            "tenant_max_models",
            "tenant_max_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.warm_workers < 0:
            raise ValueError(f"warm_workers must be >= 0; got {self.warm_workers}")
        for name in ("request_timeout", "upload_idle_seconds", "load_timeout", "compile_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.model_store is not None:
            scheme, location = parse_store_url(self.model_store)
            if scheme == "file" and self.model_dir not in (None, location):
                raise ValueError(
                    f"model_store {self.model_store!r} and model_dir {self.model_dir!r} name "
                    "different folders; give one of them"
                )
        if self.model_cache_bytes < 1:
            raise ValueError(f"model_cache_bytes must be >= 1; got {self.model_cache_bytes}")
        if self.model_store_ttl < 0:
            raise ValueError(f"model_store_ttl must be >= 0; got {self.model_store_ttl}")
        if self.max_call_seconds < 0:
            raise ValueError(
                f"max_call_seconds must be >= 0 (0: none); got {self.max_call_seconds}"
            )
        if self.min_client_ping_interval_ms < 1:
            raise ValueError(
                f"min_client_ping_interval_ms must be >= 1; got {self.min_client_ping_interval_ms}"
            )
        if self.worker_open_files < 64:
            raise ValueError(f"worker_open_files must be >= 64; got {self.worker_open_files}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be 'json' or 'text'; got {self.log_format!r}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.max_memory_bytes < 0:
            raise ValueError(f"max_memory_bytes must be >= 0; got {self.max_memory_bytes}")
        if self.max_message_bytes >= 1 << 31:
            raise ValueError(
                f"max_message_bytes must be below 2 GiB (a gRPC limit); got {self.max_message_bytes}"
            )


_HELP = {
    "host": "interface to listen on (0.0.0.0 for all)",
    "port": "gRPC port (0 picks a free one)",
    "metrics_port": "Prometheus /metrics port; 'off' disables it, 0 picks a free one",
    "max_workers": "frontend threads serving RPCs",
    "max_concurrent_rpcs": "RPCs in flight before new ones get RESOURCE_EXHAUSTED",
    "workers": "requests computed at once, each in its model's own worker process (0: one per CPU core)",
    "warm_workers": "most live worker processes, one per archive, idle ones evicted least recently used (0: 4 x --workers)",
    "load_timeout": "seconds an archive may take to load and check in its worker before it is refused",
    "max_queue": "requests that may wait for a free worker before RESOURCE_EXHAUSTED",
    "max_message_bytes": "largest gRPC message sent or received",
    "max_archive_bytes": "largest model archive, compressed or uncompressed",
    "max_store_bytes": "most bytes all stored archives may take; more uploads get RESOURCE_EXHAUSTED",
    "max_models": "most stored archives; more uploads get RESOURCE_EXHAUSTED",
    "tenant_max_models": "most models one tenant may own (0: no cap); more get QUOTA_EXCEEDED",
    "tenant_max_bytes": "most archive bytes one tenant may own (0: no cap)",
    "upload_idle_seconds": "an upload stream that sends nothing for this long is cut (DEADLINE_EXCEEDED)",
    "max_uploads_per_peer": "concurrent uploads from one client IP address (a quarter of --max-workers in all)",
    "max_loaded_bytes": "memory budget of the loaded-model cache",
    "max_tensor_elements": "most elements one request tensor may have",
    "max_memory_bytes": "default memory budget of a Jacobian's passes and result (0: none)",
    "device": "where models run: cpu, cuda or cuda:N",
    "compile": "on (build compiled Jacobian programs in compile workers, off the request path) or off",
    "compile_after": "eager Jacobians of one model and input signature before compiling it",
    "compile_timeout": "seconds a compile worker may take for one archive's programs before it is stopped",
    "torch_threads": "intra-op threads per request (0: the cores shared among the requests computing at once, for long requests; N: always N)",
    "allocator": "keep (reuse freed memory: fewer page faults) or default (glibc's own)",
    "memory_meter": "CPU peak-memory meter: rss (page high-water, nearly free) or tensors (exact, per-op cost)",
    "model_dir": "folder that keeps uploaded archives across restarts (default: temporary)",
    "model_store": "where archives are kept: file:///PATH (like --model-dir) or s3://BUCKET/PREFIX, shared by replicas (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION; --model-dir is then the local cache)",
    "model_cache_bytes": "most bytes of a shared store's archives a replica keeps locally (least recently used go first)",
    "model_store_ttl": "seconds a replica trusts that a shared store still holds a model; a delete elsewhere is seen within this time (0: asked on every request)",
    "grace_seconds": "seconds in-flight RPCs get to finish on SIGTERM",
    "request_timeout": "longest a request may run when its caller sets no deadline (seconds)",
    "max_call_seconds": "longest any call may run, whatever deadline its caller set (seconds; 0: no maximum)",
    "min_client_ping_interval_ms": "clients may ping a connection without data this often; more often earns GOAWAY too_many_pings",
    "worker_memory_bytes": "address-space limit per worker on CPU (0: physical memory / workers)",
    "worker_cpu_seconds": "CPU seconds one request may use before its worker is stopped (0: no limit)",
    "worker_open_files": "open files per worker",
    "sandbox": "confine workers: no network, files read-only but a scratch folder (true/false)",
    "op_allowlist": "file of allowed operators, one per line (default: the built-in list)",
    "allow_ops": "operators to allow beyond the list, comma-separated (e.g. prim::Print,aten::empty)",
    "allow_uploads": "accept uploads and inline archives (false: serve only --model-dir)",
    "auth_token_file": (
        "file of accepted bearer tokens, one per line: TENANT:TOKEN, or TOKEN for tenant "
        "'default' (or env JACSERVE_AUTH_TOKEN)"
    ),
    "tls_cert_file": "PEM certificate chain of the server (enables TLS)",
    "tls_key_file": "PEM private key of the server",
    "tls_client_ca_file": "PEM CA bundle; clients must present a certificate it signed (mutual TLS)",
    "log_format": "json (one object per line) or text",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _metrics_port(text: str) -> int | None:
    return None if text.lower() in ("off", "none") else int(text)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false; got {text!r}")


def _converter(name: str, default: object) -> type | object:
    if name == "metrics_port":
        return _metrics_port
    if isinstance(default, bool):
        return _boolean
    return str if default is None else type(default)


DESCRIPTION = "Serve JVPs, VJPs, Jacobians and parameter gradients over gRPC."
EPILOG = "Example: jacserve serve --host 0.0.0.0 --port 50051 --metrics-port 9464"


def add_server_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one flag per :class:`ServerConfig` field; flags left out are absent from the result."""
    for f in fields(ServerConfig):
        env = "JACSERVE_" + f.name.upper()
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_converter(f.name, f.default),
            help=f"{_HELP[f.name]} (env {env}; default {f.default})",
            default=argparse.SUPPRESS,
        )
    return parser


def config_from_flags(
    flags: Mapping[str, object], environ: Mapping[str, str], parser: argparse.ArgumentParser
) -> ServerConfig:
    """Merge parsed flags over ``JACSERVE_*`` variables over defaults.

    Raises:
        SystemExit: through ``parser.error`` for malformed variables or values.
    """
    values = {f.name: flags[f.name] for f in fields(ServerConfig) if f.name in flags}
    for f in fields(ServerConfig):
        env = "JACSERVE_" + f.name.upper()
        if f.name not in values and env in environ:
            try:
                values[f.name] = _converter(f.name, f.default)(environ[env])
            except ValueError:
                parser.error(f"{env}={environ[env]!r} is not a valid {f.name}")
    try:
        return ServerConfig(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build a :class:`ServerConfig` from ``jacserve serve`` flags and environment variables.

    Raises:
        SystemExit: on unknown flags or malformed values (argparse's behaviour).
    """
    parser = add_server_flags(
        argparse.ArgumentParser(prog="jacserve serve", description=DESCRIPTION, epilog=EPILOG)
    )
    flags = vars(parser.parse_args(argv))
    return config_from_flags(flags, os.environ if environ is None else environ, parser)
