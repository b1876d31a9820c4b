"""The committed generated code in splitfc/v1 is exactly what protoc makes of protos/."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitfc import protogen

pytest.importorskip("grpc_tools")

GENERATED = Path(protogen.__file__).resolve().parent / "v1"


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in protogen.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in GENERATED.glob("*_pb2*.py*")}
    assert fresh, "protoc generated nothing"
    assert sorted(fresh) == sorted(committed), "run `make protos` and commit splitfc/v1"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"splitfc/v1 is stale for {stale}: run `make protos` and commit"


def test_every_proto_is_versioned() -> None:
    for rel in protogen.proto_files():
        text = (protogen.PROTO_ROOT / rel).read_text()
        assert "package splitfc.v1;" in text, rel
        assert 'syntax = "proto3";' in text, rel
