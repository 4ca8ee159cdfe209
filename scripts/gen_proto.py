"""Regenerate the Python code for the wire contract, or check that it is current.

Usage:
    python scripts/gen_proto.py           # rewrite client/jacserve/v1/
    python scripts/gen_proto.py --check   # exit 1 if the committed code is stale

The ``.proto`` itself is copied beside the generated code, so that the wheel and the
image ship the contract: ``importlib.resources.files("jacserve.v1") /
"jacobian_service.proto"``.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT_ROOT = ROOT / "client"
PACKAGE_DIR = pathlib.Path("jacserve") / "v1"
GENERATED = (
    "jacobian_service_pb2.py",
    "jacobian_service_pb2.pyi",
    "jacobian_service_pb2_grpc.py",
    "jacobian_service.proto",
)


def generate(output_root: pathlib.Path) -> None:
    """Run protoc (from grpcio-tools) over every .proto file into output_root."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in protos:
        shipped = output_root / proto
        shipped.parent.mkdir(parents=True, exist_ok=True)
        shipped.write_bytes((PROTO_ROOT / proto).read_bytes())


def check() -> int:
    """Regenerate into a temporary folder and compare with the committed files."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        stale = [
            name
            for name in GENERATED
            if not (OUTPUT_ROOT / PACKAGE_DIR / name).exists()
            or not filecmp.cmp(
                pathlib.Path(tmp) / PACKAGE_DIR / name,
                OUTPUT_ROOT / PACKAGE_DIR / name,
                shallow=False,
            )
        ]
    if stale:
        print(
            f"stale generated code: {', '.join(stale)}; run `make proto` and commit the result",
            file=sys.stderr,
        )
        return 1
    print("generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    if parser.parse_args().check:
        return check()
    generate(OUTPUT_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
