"""Pin the image's Python dependencies: ``deploy/constraints.txt``.

Usage:
    python scripts/gen_constraints.py           # resolve and rewrite deploy/constraints.txt
    python scripts/gen_constraints.py --check   # exit 1 if a runtime dependency is unpinned

pip resolves the dependencies of ``jacserve[server]`` (``pip install --dry-run --report``, nothing
installed) with the pinned CPU torch, and every resolved distribution except jacserve is
written as ``name==version``. The Dockerfile installs with ``-c deploy/constraints.txt``,
so two builds of one commit get the same packages; rerun this after changing
``pyproject.toml``'s dependencies (the check is in the test suite).

>>> sorted(pinned_names("# comment\\ngrpcio==1.0\\nNumPy==2.0\\n"))
['grpcio', 'numpy']
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
TORCH = "torch==2.13.0"
_HEADER = (
    "# The image's Python dependencies, pinned (scripts/gen_constraints.py writes this file;\n"
    "# the Dockerfile installs with -c deploy/constraints.txt). torch is pinned by the\n"
    "# Dockerfile's TORCH_VERSION and installed first from the CPU index.\n"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_names(text: str) -> set[str]:
    """The distribution names a constraints file pins."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return {_canonical(line.split("==", 1)[0]) for line in lines if "==" in line}


def runtime_dependencies() -> set[str]:
    """The names of what the image installs: ``[project] dependencies`` and the
    ``server`` extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    return {_canonical(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in wanted}


def resolve() -> list[str]:
    """``name==version`` of every distribution pip would install with jacserve."""
    with tempfile.TemporaryDirectory() as folder:
        report = pathlib.Path(folder) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        command += ["--quiet", "--report", str(report), TORCH, f"{ROOT}[server]"]
        subprocess.run(command, check=True)
        installed = json.loads(report.read_text())["install"]
    pins = {
        _canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in installed
        if _canonical(item["metadata"]["name"]) not in ("jacserve", "torch")
    }
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a dependency is unpinned")
    if parser.parse_args().check:
        missing = runtime_dependencies() - pinned_names(CONSTRAINTS.read_text()) - {"torch"}
        if missing:
            print(f"unpinned: {sorted(missing)}; run scripts/gen_constraints.py", file=sys.stderr)
            return 1
        return 0
    CONSTRAINTS.write_text(_HEADER + "\n".join(resolve()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
