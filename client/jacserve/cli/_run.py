"""Running a client command: connect, run it, and map its failures to exit codes (see
``jacserve.cli``): a usage or file error is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

from jacserve.cli._io import OUTPUT_SUFFIXES, InputError, check_output, readable_file
from jacserve.cli._parser import EXIT_CONNECTION, EXIT_OK, EXIT_SERVER, EXIT_USAGE, one_line
from jacserve.client import Client, DeadlineExceeded, JacserveError, Unavailable
from jacserve.client._connection import DEFAULT_TARGET

__all__ = ["run"]


def _check_destinations(args: argparse.Namespace) -> None:
    """Fail before any call when ``-o`` or ``--plot`` cannot be written (or drawn)."""
    if getattr(args, "output", None):
        check_output(args.output, OUTPUT_SUFFIXES, "-o")
    for flag in ("plot", "plot_eigenvalues"):
        if getattr(args, flag, None):
            from jacserve.cli._plot import check_plot

            check_plot(getattr(args, flag), what=f"--{flag.replace('_', '-')}")


def _certificates(path: str | None) -> bytes | None:
    """The PEM bytes of ``--tls-ca``, or ``None`` without one."""
    return readable_file(path, "--tls-ca").read_bytes() if path else None


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"jacserve: {message}\n")
    return code


def run(
    command: Callable[[Client, argparse.Namespace], None],
    args: argparse.Namespace,
    environ: Mapping[str, str],
) -> int:
    """Connect, run ``command``, and map failures to exit codes (see ``jacserve.cli``)."""
    target = args.target or environ.get("JACSERVE_TARGET") or DEFAULT_TARGET
    token = args.token or environ.get("JACSERVE_TOKEN") or None
    try:
        _check_destinations(args)
        ca = _certificates(args.tls_ca)
        targets = [t.strip() for t in target.split(",") if t.strip()]
        with Client(targets, timeout=args.timeout, token=token, root_certificates=ca) as client:
            command(client, args)
    except InputError as exc:
        return _fail(one_line(exc), EXIT_USAGE)
    except (Unavailable, DeadlineExceeded) as exc:
        return _fail(f"cannot reach a server at {target}: {exc.message}", EXIT_CONNECTION)
    except JacserveError as exc:
        return _fail(f"the server refused: {exc}", EXIT_SERVER)
    except (ValueError, TypeError) as exc:  # the SDK's checks of what the files hold
        return _fail(one_line(exc), EXIT_USAGE)
    except OSError as exc:  # a file that went away or became unreadable meanwhile
        if exc.filename is None:
            raise
        return _fail(f"{exc.filename}: {exc.strerror}", EXIT_USAGE)
    return EXIT_OK
