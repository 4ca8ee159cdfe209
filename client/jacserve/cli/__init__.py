"""The ``jacserve`` command: serve, manage models, and ask for derivatives from a shell.

Exit codes: 0 success; 1 an unexpected failure (a bug: a traceback is printed); 2 a
usage or file error (bad flags, a missing, unreadable or malformed input file, an output
that cannot be written, ``--plot`` without matplotlib), reported in one line on stderr
(files are checked before any call to the server); 3 the server refused the request (its message is
printed); 4 no server reachable, or no answer before the deadline (``--timeout``).
``jacserve health`` exits 0 when the server is SERVING, 3 when it answers otherwise.

>>> build_parser().prog
'jacserve'
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from jacserve.cli._health import add_health_command
from jacserve.cli._parser import (
    EXIT_CONNECTION,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_USAGE,
    Parser,
)

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``jacserve`` command."""
    from jacserve.cli._flags import add_client_commands  # torch: not for health checks

    parser = Parser(
        prog="jacserve",
        description="Remote differentiation of PyTorch programs: a server and its client.",
        epilog="Run 'jacserve COMMAND --help' for a command's flags and examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="start the gRPC server (all server flags: jacserve serve --help)",
        add_help=False,
    )
    add_client_commands(commands)
    add_health_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jacserve``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["health"]:  # no torch: it runs every few seconds in a container
        from jacserve.cli._health import check_health

        return check_health(argv, os.environ)
    if argv[:1] == ["serve"]:
        try:  # a client-only install has neither torch (the workers') nor the server's packages
            if importlib.util.find_spec("torch") is None:
                raise ImportError("torch", name="torch")
            from jacserve.server.app import main as serve_main  # the server only when serving
        except ImportError as missing:
            print(
                f"jacserve serve: {missing.name or missing} is not installed; the server needs "
                "the server extra: pip install torch==2.13.0 'jacserve[server]'",
                file=sys.stderr,
            )
            return 2
        return serve_main(argv)
    args = build_parser().parse_args(argv)
    from jacserve.cli._commands import COMMANDS
    from jacserve.cli._run import run

    return run(COMMANDS[args.command], args, os.environ)


if __name__ == "__main__":
    sys.exit(main())
