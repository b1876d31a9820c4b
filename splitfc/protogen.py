"""Generate the Python code of protos/ (needs grpcio-tools, a dev dependency).

``python -m splitfc.protogen OUT_ROOT`` writes ``OUT_ROOT/splitfc/v1/*_pb2*.py``;
``make protos`` runs it on the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"


def proto_files() -> list[Path]:
    """The .proto files of the wire format, relative to ``protos/``."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpc_tools) for every proto into ``out_root``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "splitfc" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    # Output root: the folder that holds splitfc/v1.
    root = out.parent.parent if out.name == "v1" else out
    for path in generate(root):
        print(path)


if __name__ == "__main__":
    main()
