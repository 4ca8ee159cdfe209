"""The exit codes of ``jacserve`` and an argument parser whose errors take one line.

Imports neither torch nor grpc: ``jacserve health`` uses it too.

>>> parser = Parser(prog="jacserve demo")
>>> _ = parser.add_argument("--k", type=int)
>>> parser.parse_args(["--k", "3"]).k
3
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "Parser",
    "one_line",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_SERVER, EXIT_CONNECTION = 0, 1, 2, 3, 4


def one_line(text: object) -> str:
    """The first non-blank line of ``text``'s string (what a terminal message shows).

    >>> one_line("bad value\\n  more detail")
    'bad value'
    >>> one_line(ValueError())
    'ValueError'
    """
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(text).__name__


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reports a usage error as one line on stderr and exits 2
    (argparse's default prints the whole usage first); subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see 'PROG --help')`` and exit with 2."""
        self.exit(
            EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n"
        )
