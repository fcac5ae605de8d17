"""Generates the clerk-sync Python client code from the repository's proto/.

Runs grpcio-tools' bundled protoc (no system protoc needed) on every .proto
file under ../../proto and writes the messages (`*_pb2.py`, with `.pyi` type
stubs) and gRPC stubs (`*_pb2_grpc.py`) into ./clerk/sync/v1/, next to the
hand-written `clerk_sync_client` package. Nothing generated is committed:
run this before building, installing or testing the package.

    python generate.py            # needs: pip install grpcio-tools
"""

from __future__ import annotations

import importlib.resources
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"


def generate(out: Path = HERE) -> list[Path]:
    """Regenerates the code into `out` and returns the files written."""
    from grpc_tools import protoc

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    # Code from a .proto that no longer exists must not linger.
    packages = sorted({Path(proto).parts[0] for proto in protos})
    for package in packages:
        shutil.rmtree(out / package, ignore_errors=True)
    well_known_types = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known_types}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    return sorted(path for package in packages for path in (out / package).rglob("*_pb2*"))


if __name__ == "__main__":
    written = generate()
    print(f"generated {len(written)} files into {HERE / 'clerk'}", file=sys.stderr)
