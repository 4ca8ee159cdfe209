"""``jacserve health``: the server's gRPC health status, without importing torch (it runs
as a container health check every few seconds).

>>> parser = argparse.ArgumentParser()
>>> health = add_health_command(parser.add_subparsers(dest="command"))
>>> parser.parse_args(["health", "--timeout", "2"]).timeout
2.0
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jacserve.cli._parser import EXIT_CONNECTION, EXIT_OK, EXIT_SERVER, EXIT_USAGE, Parser

__all__ = ["add_health_command", "check_health"]

DEFAULT_TARGET = "127.0.0.1:50051"  # as jacserve.client's, which imports torch


def add_health_command(commands: Any) -> argparse.ArgumentParser:
    """Add ``health`` to ``jacserve``'s subparsers."""
    health = commands.add_parser(
        "health",
        help="ask the server's gRPC health service (exit 0 when SERVING)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  jacserve health --target 127.0.0.1:50051 --timeout 3\n"
        "Exit codes: 0 SERVING, 3 answered but not serving (starting, draining), 4 no answer.",
    )
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    health.add_argument(
        "--target", help=f"server host:port (env JACSERVE_TARGET; default {DEFAULT_TARGET})"
    )
    health.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="CA that signed the server's certificate (env JACSERVE_TLS_CA)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    return health


def check_health(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run ``jacserve health ARGS``; returns the exit code.

    >>> check_health(["health", "--target", "127.0.0.1:9", "--timeout", "0.2"], {})
    4
    >>> check_health(["health", "--tls-ca", "/nonexistent/ca.pem"], {})
    2
    """
    parser = Parser(prog="jacserve")
    add_health_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    target = args.target or environ.get("JACSERVE_TARGET") or DEFAULT_TARGET
    ca_file = args.tls_ca or environ.get("JACSERVE_TLS_CA")
    try:
        ca = pathlib.Path(ca_file).read_bytes() if ca_file else None
    except OSError as exc:
        sys.stderr.write(f"jacserve: --tls-ca {ca_file}: cannot read it ({exc.strerror})\n")
        return EXIT_USAGE
    channel = (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(ca))
        if ca is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            sys.stderr.write(f"jacserve: no health answer from {target}: {exc.code().name}\n")
            return EXIT_CONNECTION
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    sys.stdout.write(status + "\n")
    return EXIT_OK if status == "SERVING" else EXIT_SERVER
