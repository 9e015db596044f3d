"""Regenerate dataisland/v1 from proto/dataisland/v1 (the one command; output is committed).

Usage: python scripts/gen_proto.py [--out DIR]

tests/unit/test_generated_code.py runs this into a temporary directory and fails when the
committed files differ, so an edited .proto without regenerated code cannot land.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("dataisland") / "v1"
# mypy-protobuf's plugins are installed beside the interpreter running this script.
BIN = Path(sys.executable).parent


def generate(out: Path) -> list[Path]:
    """Write the Python, gRPC and typing stubs for every .proto under proto/ into `out`."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out / PACKAGE / "__init__.py"
    init.write_text(
        '"""Generated from proto/dataisland/v1 by scripts/gen_proto.py: do not edit."""\n'
    )
    return sorted(p for p in (out / PACKAGE).iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
