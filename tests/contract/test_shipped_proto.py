"""The wire contract ships with the package: the ``.proto`` is importable as a resource
(and so is inside the wheel and the image), identical to the source in ``proto/``."""

from __future__ import annotations

import importlib.resources
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "proto" / "jacserve" / "v1" / "jacobian_service.proto"


def test_the_proto_is_a_package_resource_equal_to_the_source():
    shipped = importlib.resources.files("jacserve.v1") / "jacobian_service.proto"
    assert shipped.read_bytes() == SOURCE.read_bytes()


def test_the_wheel_carries_the_proto(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("jacserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "jacserve/v1/jacobian_service.proto" in names
