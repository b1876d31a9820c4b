"""The ``hyperprior`` codec: round trips, cross-process determinism, shipped checkpoints, safe loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from functools import cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from splitfc.common.bitstream import bitstream_stats, decode_features, encode_features, header_bytes, read_sfc
from splitfc.common.codecs.hyperprior import SHIPPED_DIR, HyperpriorCodec, checkpoint_path
from splitfc.common.errors import BitstreamError
from splitfc.common.learned.checkpoint import CheckpointError, config_path, load_checkpoint
from splitfc.common.learned.evaluate import evaluate_checkpoints
from splitfc.common.learned.model import tiles
from splitfc.common.learned.payload import pack_payload, unpack_payload
from splitfc.common.specs import SPLITS, get_split

SPLIT_IDS = list(SPLITS)
QUALITIES = (1, 2, 3, 4, 5)
EVAL_SAMPLES = 4


@cache
def tiny_features(split: str, n: int = EVAL_SAMPLES) -> tuple[np.ndarray, ...]:
    """Features of the tiny preset on held-out (non-training) samples."""
    from splitfc.common.models import get_split_model, tiny_samples

    model = get_split_model(split, "tiny")
    return tuple(np.asarray(model.head(s.inputs), dtype=np.float32) for s in tiny_samples(split, n))


@pytest.fixture(scope="module")
def feature_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("features")
    dirs = {}
    for split in SPLIT_IDS:
        d = root / split
        d.mkdir()
        for i, x in enumerate(tiny_features(split)):
            np.save(d / f"{i:03d}.npy", x)
        dirs[split] = d
    return dirs


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_shipped_checkpoints_load_for_every_quality(split: str) -> None:
    for q in QUALITIES:
        model, cfg = load_checkpoint(checkpoint_path(split, q, SHIPPED_DIR), expect_split=split)
        assert cfg.split == split and cfg.quality == q
        assert cfg.command.startswith("splitfc train-codec --split " + split)
        assert model.N == cfg.N and model.M == cfg.M
    lambdas = [load_checkpoint(checkpoint_path(split, q, SHIPPED_DIR))[1].lmbda for q in QUALITIES]
    assert lambdas == sorted(lambdas) and len(set(lambdas)) == 5


def test_shipped_checkpoints_fit_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in SHIPPED_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 1024 * 1024


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_round_trip_shape_dtype_and_rate(split: str) -> None:
    x = tiny_features(split)[0]
    msg = encode_features(x, split, "hyperprior", 3)
    y = decode_features(msg)
    assert y.shape == x.shape and y.dtype == np.float32
    lows, highs = zip(*get_split(split).ranges(HyperpriorCodec.truncation), strict=True)
    assert np.all(y >= min(lows) - 1e-6) and np.all(y <= max(highs) + 1e-6)
    stats = bitstream_stats(msg)
    assert stats.bpfp == len(msg.payload) * 8 / x.size
    assert msg.codec.extra["checkpoint"] == load_checkpoint(checkpoint_path(split, 3, SHIPPED_DIR))[1].checkpoint_id
    assert msg.codec.extra["checkpoint_split"] == split


def _cli(*args: str, threads: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "splitfc", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("split", ["dinov2-dpt", "sd3-tti"])
def test_decoding_in_another_process_gives_the_identical_tensor(split: str, tmp_path: Path) -> None:
    x = tiny_features(split)[1]
    np.save(tmp_path / "x.npy", x)
    enc = _cli("encode", str(tmp_path / "x.npy"), "--split", split, "--codec", "hyperprior", "--quality", "4",
               "-o", str(tmp_path / "x.sfc"), threads=2)
    assert enc.returncode == 0, enc.stderr
    outputs = []
    for threads in (1, 2):
        dec = _cli("decode", str(tmp_path / "x.sfc"), "-o", str(tmp_path / f"y{threads}.npy"), threads=threads)
        assert dec.returncode == 0, dec.stderr
        outputs.append(np.load(tmp_path / f"y{threads}.npy"))
    here = decode_features(read_sfc(tmp_path / "x.sfc"))
    assert np.array_equal(outputs[0], outputs[1])
    assert np.array_equal(outputs[0], here)
    # and encoding is deterministic across processes too
    again = encode_features(x, split, "hyperprior", 4)
    assert again.payload == read_sfc(tmp_path / "x.sfc").payload


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_rate_falls_and_mse_rises_over_the_shipped_qualities(split: str, feature_dirs: dict[str, Path]) -> None:
    rows = evaluate_checkpoints(split, split, feature_dirs[split], list(QUALITIES), directory=SHIPPED_DIR, task=False)
    bpfp = [r["bpfp"] for r in rows]
    mse = [r["mse"] for r in rows]
    assert all(a < b for a, b in pairwise(bpfp)), bpfp  # quality 1 -> 5: rate rises
    assert all(a > b for a, b in pairwise(mse)), mse  # ... and distortion falls


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_trained_checkpoints_beat_the_untrained_architecture(
    split: str, feature_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from splitfc.common.learned.training import untrained_checkpoint

    cfg = load_checkpoint(checkpoint_path(split, 1, SHIPPED_DIR))[1]
    untrained_checkpoint(split, checkpoint_path(split, 1, tmp_path), N=cfg.N, M=cfg.M)
    base = evaluate_checkpoints(split, split, feature_dirs[split], [1], directory=tmp_path, task=False)[0]
    trained = evaluate_checkpoints(split, split, feature_dirs[split], list(QUALITIES), directory=SHIPPED_DIR,
                                   task=False)
    # some trained quality has no more distortion and strictly fewer bits than the untrained model
    assert any(r["mse"] <= base["mse"] and r["bpfp"] < base["bpfp"] for r in trained), (base, trained)


def _copy_checkpoint(src_split: str, src_q: int, dst_dir: Path, dst_split: str, dst_q: int) -> Path:
    src = checkpoint_path(src_split, src_q, SHIPPED_DIR)
    dst = checkpoint_path(dst_split, dst_q, dst_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    shutil.copy(config_path(src), config_path(dst))
    return dst


def test_checkpoint_for_the_wrong_split_is_refused(tmp_path: Path) -> None:
    _copy_checkpoint("dinov2-cls", 3, tmp_path, "dinov2-seg", 3)
    codec = HyperpriorCodec(directory=tmp_path)
    with pytest.raises(CheckpointError, match="trained for split dinov2-cls, not dinov2-seg"):
        codec.encode(tiny_features("dinov2-seg")[0], get_split("dinov2-seg"), 3)


def test_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    path = _copy_checkpoint("dinov2-cls", 3, tmp_path, "dinov2-cls", 3)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    config_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    config_path(path).unlink()
    with pytest.raises(CheckpointError, match="no config"):
        load_checkpoint(path)


class _Tripwire:
    """Unpickling this touches a file: proof that a loader unpickled it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.target),))


def test_a_pickle_given_as_checkpoint_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    import pickle

    good = _copy_checkpoint("dinov2-cls", 3, tmp_path, "dinov2-cls", 3)
    tripwire = tmp_path / "unpickled"
    blob = pickle.dumps({"weights": _Tripwire(str(tripwire))})
    good.write_bytes(blob)
    cfg = json.loads(config_path(good).read_text())
    cfg["checkpoint_id"] = hashlib.sha256(blob).hexdigest()  # even with a matching hash
    config_path(good).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(good)
    assert not tripwire.exists()


def test_bitstream_from_another_checkpoint_is_refused(tmp_path: Path) -> None:
    x = tiny_features("dinov2-cls")[0]
    msg = encode_features(x, "dinov2-cls", "hyperprior", 3)
    _copy_checkpoint("dinov2-cls", 2, tmp_path, "dinov2-cls", 3)  # a different q3 here
    spec = get_split("dinov2-cls")
    codec = HyperpriorCodec(directory=tmp_path)
    from splitfc.common.codecs.base import Encoded, FrameInfo

    pre = msg.preprocessing
    frame = FrameInfo(tuple((r.low, r.high) for r in pre.ranges), pre.bit_depth, spec.packing,
                      pre.frame_height, pre.frame_width)
    with pytest.raises(BitstreamError, match="coded with hyperprior checkpoint"):
        coded = Encoded(msg.payload, frame, dict(msg.codec.extra), msg.decoded_digest, header_bytes(msg))
        codec.decode(coded, spec, x.shape, np.dtype(np.float32), 3)
    # the same payload claimed to be quality 2 of the shipped set is refused too
    msg.codec.rate = 2
    with pytest.raises(BitstreamError, match="coded with hyperprior checkpoint"):
        decode_features(msg)


def test_hostile_payloads_give_errors_or_well_formed_tensors() -> None:
    x = tiny_features("llama3-csr")[0]
    msg = encode_features(x, "llama3-csr", "hyperprior", 3)
    payload = bytes(msg.payload)
    rng = np.random.default_rng(0)
    variants = [payload[:1], payload[:-1], payload + b"\x00", b"\x01" + payload[1:], b"\x03" + payload[1:],
                b"\x02\xff\xff\xff\xff\xff"]
    for _ in range(40):
        b = bytearray(payload)
        i = int(rng.integers(2, len(b)))
        b[i] = int(rng.integers(0, 256))
        variants.append(bytes(b))
    variants.append(payload[:4] + rng.integers(0, 256, len(payload) - 4, dtype=np.uint8).tobytes())
    import zlib

    for v in variants:
        msg.payload = v
        msg.payload_crc32 = zlib.crc32(v)
        try:
            y = decode_features(msg)
        except BitstreamError:
            continue
        assert y.shape == x.shape and np.all(np.isfinite(y))


def test_payload_layout_round_trip_and_checks() -> None:
    strings = [(b"y" * 300, b"z" * 5), (b"", b"q")]
    data = pack_payload(128, strings)
    assert unpack_payload(data, lambda tile: 2) == (128, strings)
    with pytest.raises(BitstreamError, match="trailing"):
        unpack_payload(data + b"\x00", lambda tile: 2)
    with pytest.raises(BitstreamError, match="truncated"):
        unpack_payload(data[:-1], lambda tile: 2)
    with pytest.raises(BitstreamError, match="tile size"):
        unpack_payload(b"\x02\x00", lambda tile: 1)


def test_frames_larger_than_a_tile_are_tiled_and_cropped_back() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1100, 96)) * 1.5).astype(np.float32)
    msg = encode_features(x, "llama3-csr", "hyperprior", 5)
    y = decode_features(msg)
    assert y.shape == x.shape
    _, cfg = load_checkpoint(checkpoint_path("llama3-csr", 5, SHIPPED_DIR))
    tile, strings = unpack_payload(msg.payload, lambda t: len(tiles(1100, 96, t)))
    assert tile == cfg.tile and len(strings) == len(tiles(1100, 96, cfg.tile)) == 2
    assert float(np.mean((np.clip(x, -5, 5) - y) ** 2)) < float(np.var(np.clip(x, -5, 5)))


def test_generalize_command_reports_rate_distortion_and_task_metric(
    feature_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from splitfc.cli import main

    out = tmp_path / "gen.json"
    assert main(["generalize", "--trained-on", "dinov2-seg", "--split", "dinov2-cls", "--features",
                 str(feature_dirs["dinov2-cls"]), "--qualities", "1,5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["quality"] for r in rows] == [1, 5, None]
    assert rows[2]["trained_on"] == "pre-processing only" and rows[2]["bpfp"] == 10.0
    rows = rows[:2]
    assert all(r["trained_on"] == "dinov2-seg" and r["split"] == "dinov2-cls" for r in rows)
    assert rows[0]["bpfp"] < rows[1]["bpfp"]
    assert all(r["metric"] == "top-1 accuracy" and 0 <= r["metric_value"] <= 100 for r in rows)
    assert "| dinov2-cls | dinov2-seg | 1 |" in capsys.readouterr().out
