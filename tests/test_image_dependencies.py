"""The image installs pinned dependencies and leaves build-only tools out: every runtime
dependency of pyproject.toml is pinned in deploy/constraints.txt, the Dockerfile installs
with those constraints, and code generation (grpcio-tools) is not a runtime dependency."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from gen_constraints import pinned_names, runtime_dependencies  # noqa: E402


def test_every_runtime_dependency_is_pinned_for_the_image():
    pinned = pinned_names((ROOT / "deploy" / "constraints.txt").read_text())
    assert runtime_dependencies() - {"torch"} <= pinned
    check = [sys.executable, str(ROOT / "scripts" / "gen_constraints.py"), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 0


def test_the_dockerfile_installs_with_the_constraints_and_keeps_its_health_check():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/constraints.txt" in dockerfile
    assert 'pip install -c constraints.txt ".[server]"' in dockerfile
    assert "HEALTHCHECK" in dockerfile and '"jacserve", "health"' in dockerfile
    assert "--format docker" in (ROOT / "deploy" / "test-image.sh").read_text()


def test_code_generation_is_not_a_runtime_dependency():
    assert "grpcio-tools" not in runtime_dependencies()
