"""The coding CLI contract: codecs, encode, decode, inspect, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splitfc.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitfc", *args], capture_output=True, text=True, timeout=300, check=False
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("splitfc: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def cls_npy(tmp_path: Path, make_features) -> Path:
    path = tmp_path / "cls.npy"
    np.save(path, make_features((257, 1536), seed=7))
    return path


def test_codecs_json(capsys) -> None:
    assert main(["codecs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert {"raw", "vvenc", "hevc", "vtm"} <= set(names)
    for r in rows:
        assert set(r) >= {"name", "available", "reason"}
        assert (r["reason"] is None) == r["available"]


def test_encode_inspect_decode(tmp_path: Path, cls_npy: Path, capsys) -> None:
    sfc, out = tmp_path / "x.sfc", tmp_path / "y.npy"
    assert main(["encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "hevc", "--qp", "32", "-o", str(sfc)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(sfc), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("codec", "split", "shape", "feature_points", "payload_bits", "total_bytes", "bpfp"):
        assert key in info
    assert info["codec"] == "hevc" and info["split"] == "dinov2-cls" and info["shape"] == [257, 1536]
    assert info["feature_points"] == 257 * 1536
    assert info["bpfp"] == pytest.approx(info["payload_bits"] / info["feature_points"])
    assert main(["decode", str(sfc), "-o", str(out)]) == 0
    y = np.load(out)
    assert y.shape == (257, 1536) and y.dtype == np.float32


def test_raw_cli_is_bit_exact(tmp_path: Path, cls_npy: Path) -> None:
    sfc, out = tmp_path / "x.sfc", tmp_path / "y.npy"
    assert main(["encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "raw", "-o", str(sfc)]) == 0
    assert main(["decode", str(sfc), "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(cls_npy))


def test_corrupt_sfc(tmp_path: Path, cls_npy: Path) -> None:
    sfc = tmp_path / "x.sfc"
    assert main(["encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "raw", "-o", str(sfc)]) == 0
    data = bytearray(sfc.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sfc.write_bytes(bytes(data))
    assert_one_line_error(run_cli("decode", str(sfc), "-o", str(tmp_path / "y.npy")), "CRC32")


def test_truncated_sfc(tmp_path: Path, cls_npy: Path) -> None:
    sfc = tmp_path / "x.sfc"
    assert main(["encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "raw", "-o", str(sfc)]) == 0
    sfc.write_bytes(sfc.read_bytes()[: 200])
    assert_one_line_error(run_cli("decode", str(sfc), "-o", str(tmp_path / "y.npy")))


def test_foreign_file(tmp_path: Path, cls_npy: Path) -> None:
    assert_one_line_error(run_cli("inspect", str(cls_npy)), "not a splitfc .sfc file")


def test_unknown_codec(tmp_path: Path, cls_npy: Path) -> None:
    proc = run_cli("encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "jpeg9000", "--qp", "1",
                   "-o", str(tmp_path / "x.sfc"))
    assert_one_line_error(proc, "unknown codec 'jpeg9000'", "vvenc")


def test_unknown_split(tmp_path: Path, cls_npy: Path) -> None:
    proc = run_cli("encode", str(cls_npy), "--split", "resnet", "--codec", "raw", "-o", str(tmp_path / "x.sfc"))
    assert_one_line_error(proc, "unknown split 'resnet'", "dinov2-cls")


def test_shape_that_does_not_fit(tmp_path: Path, cls_npy: Path) -> None:
    proc = run_cli("encode", str(cls_npy), "--split", "dinov2-dpt", "--codec", "raw", "-o", str(tmp_path / "x.sfc"))
    assert_one_line_error(proc, "dinov2-dpt expects a 4-d tensor", "257x1536")


def test_missing_vtm_binary(tmp_path: Path, cls_npy: Path) -> None:
    import os

    env = {**os.environ, "SPLITFC_VTM_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "splitfc", "encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "vtm",
         "--qp", "32", "-o", str(tmp_path / "x.sfc")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert_one_line_error(proc, "EncoderAppStatic", "SPLITFC_VTM_DIR")


def test_missing_qp_and_missing_file(tmp_path: Path, cls_npy: Path) -> None:
    proc = run_cli("encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "hevc", "-o", str(tmp_path / "x.sfc"))
    assert_one_line_error(proc, "needs --qp")
    proc = run_cli("decode", str(tmp_path / "nope.sfc"), "-o", str(tmp_path / "y.npy"))
    assert_one_line_error(proc, "nope.sfc")


def test_decode_refuses_a_bitstream_claiming_more_elements_than_allowed(tmp_path: Path, cls_npy: Path) -> None:
    """A few payload bytes may claim gigabytes (an all-zero native or zstd payload): `decode` bounds the claim
    like the cloud, by --max-elements or by default the split's paper shape (CSR: 8192 tokens)."""
    sfc, out = tmp_path / "x.sfc", tmp_path / "y.npy"
    assert main(["encode", str(cls_npy), "--split", "dinov2-cls", "--codec", "native", "--qp", "32",
                 "-o", str(sfc)]) == 0
    proc = run_cli("decode", str(sfc), "-o", str(out), "--max-elements", "1000")
    assert_one_line_error(proc, "elements")
    assert not out.exists()
    assert main(["decode", str(sfc), "-o", str(out), "--max-elements", str(257 * 1536)]) == 0
    assert np.load(out).shape == (257, 1536)
    # default: a zstd raw CSR tensor of 8193 tokens (one over the default token bound) is refused unread
    big, zeros = tmp_path / "big.sfc", tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((8193, 4096), np.float32))
    assert main(["encode", str(zeros), "--split", "llama3-csr", "--codec", "raw", "--zstd", "1",
                 "-o", str(big)]) == 0
    assert big.stat().st_size < 1 << 20
    proc = run_cli("decode", str(big), "-o", str(tmp_path / "big.npy"))
    assert_one_line_error(proc, "elements")
