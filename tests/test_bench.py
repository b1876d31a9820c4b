"""The benchmark: aggregation, analyses, cache, resume without recomputation, reports, CLI."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitfc.cli import main
from splitfc.common.bench.aggregate import aggregate_records
from splitfc.common.bench.analysis import accuracy_drop, as_quality, r_squared
from splitfc.common.bench.cache import ResultCache, point_key
from splitfc.common.bench.features import read_feature_dir
from splitfc.common.bench.runner import BenchConfig, BenchStopped, run_bench
from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import TaskOutput

# ----------------------------------------------------------------------------- aggregation and analyses


def _rec(bits: int, points: int, **kw: Any) -> dict[str, Any]:
    return {"payload_bits": bits, "feature_points": points, "bpfp": bits / points, **kw}


def test_bpfp_is_the_mean_of_sample_bpfp_and_pooled_is_bits_over_points() -> None:
    recs = [
        _rec(100, 100, feature_mse=1.0, encode_ms=10.0, decode_ms=2.0, peak_rss_mb=50.0, peak_alloc_mb=1.0),
        _rec(300, 100, feature_mse=3.0, encode_ms=20.0, decode_ms=4.0, peak_rss_mb=70.0, peak_alloc_mb=2.0),
        _rec(100, 200, feature_mse=2.0, encode_ms=30.0, decode_ms=6.0, peak_rss_mb=60.0, peak_alloc_mb=None),
    ]
    agg = aggregate_records(recs)
    assert agg["samples"] == 3
    assert agg["bpfp"] == pytest.approx((1.0 + 3.0 + 0.5) / 3)
    assert agg["bpfp_pooled"] == pytest.approx(500 / 400)
    assert agg["feature_mse"] == pytest.approx(2.0)
    assert agg["encode_ms"] == pytest.approx(20.0)
    assert agg["decode_ms"] == pytest.approx(4.0)
    assert agg["encode_ms_total"] == pytest.approx(60.0)
    assert agg["peak_rss_mb"] == 70.0
    assert agg["peak_alloc_mb"] == 2.0
    assert agg["payload_bytes_total"] == 62
    with pytest.raises(ValueError):
        aggregate_records([])


def test_accuracy_drop_and_quality() -> None:
    assert accuracy_drop(75.0, 100.0, True) == pytest.approx(25.0)
    assert accuracy_drop(100.0, 100.0, True) == 0.0
    # Dpt: reciprocal of RMSE. 0.5 -> 1.0 RMSE halves 1/RMSE: AD 50 %.
    assert accuracy_drop(1.0, 0.5, False) == pytest.approx(50.0)
    # Paper Table 3 VTM Dpt, QP 42 vs Original: 1 - 0.3695 / 2.1174 = 82.55 %.
    assert accuracy_drop(2.1174, 0.3695, False) == pytest.approx(82.549, abs=1e-3)
    assert accuracy_drop(3.0, 0.0, False) is None  # original RMSE 0: no reciprocal
    assert as_quality(0.25, False) == 4.0
    assert as_quality(80.0, True) == 80.0


def test_r_squared() -> None:
    assert r_squared([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert r_squared([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(1.0)
    # hand-computed: x=[0,1,2], y=[0,2,1]: r = 0.5, R² = 0.25
    assert r_squared([0, 1, 2], [0, 2, 1]) == pytest.approx(0.25)
    assert r_squared([1, 2], [1, 2]) is None
    assert r_squared([1, 1, 1], [1, 2, 3]) is None


# ----------------------------------------------------------------------------- cache


def test_cache_round_trip_and_key_mismatch(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache")
    key = point_key({"a": 1})
    assert key != point_key({"a": 2})
    rec = {"split": "dinov2-cls", "codec": "raw", "rate": 0, "sample": "s/0", "key": key, "bpfp": 32.0}
    cache.put(rec, {"mask": np.arange(6).reshape(2, 3)})
    got = cache.get("dinov2-cls", "raw", 0, "s/0", key)
    assert got is not None and got["bpfp"] == 32.0
    assert cache.load_arrays(got)["mask"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert cache.get("dinov2-cls", "raw", 0, "s/0", point_key({"a": 2})) is None
    assert cache.count() == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    path = cache.path("dinov2-cls", "raw", 0, "s/0", key)
    path.write_text("{not json")
    assert cache.get("dinov2-cls", "raw", 0, "s/0", key) is None


# ----------------------------------------------------------------------------- feature folders


def test_feature_folder_layouts(tmp_path: Path) -> None:
    x = np.zeros((4, 8), np.float32)
    (tmp_path / "a" / "dinov2-cls").mkdir(parents=True)
    for i in range(3):
        np.save(tmp_path / "a" / "dinov2-cls" / f"{i:04d}.npy", x + i)
    files = read_feature_dir(tmp_path / "a", "dinov2-cls", 2)
    assert [f.sample for f in files] == ["0000", "0001"]
    assert files[0].sha256 != files[1].sha256
    paper = tmp_path / "b" / "llama3" / "csr" / "feature_test"
    paper.mkdir(parents=True)
    np.save(paper / "arc_0.npy", np.zeros((5, 16), np.float32))
    assert [f.sample for f in read_feature_dir(tmp_path / "b", "llama3-csr", 10)] == ["arc_0"]
    with pytest.raises(SplitfcError, match="feature_test"):
        read_feature_dir(tmp_path / "b", "dinov2-seg", 1)
    # a single `splitfc extract -o DIR` folder, recognised by its manifest
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c" / "x.npy", x)
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({"split": "dinov2-cls", "files": []}))
    assert [f.sample for f in read_feature_dir(tmp_path / "c", "dinov2-cls", 5)] == ["x"]
    with pytest.raises(SplitfcError):
        read_feature_dir(tmp_path / "c", "dinov2-seg", 5)


# ----------------------------------------------------------------------------- runs with a stand-in task layer



def _features(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(1)
    folder = root / "feats" / "dinov2-cls"
    folder.mkdir(parents=True)
    for i in range(n):
        np.save(folder / f"s{i}.npy", (rng.standard_t(3, size=(16, 24)) * 2).astype(np.float32))
    return root / "feats"


def _config(tmp_path: Path, **kw: Any) -> BenchConfig:
    base: dict[str, Any] = dict(
        splits=["dinov2-cls"], codecs=["raw", "hevc"], output=tmp_path / "out", features_dir=_features(tmp_path),
        samples=3, qps=[22, 42], plots=False, progress=False,
    )
    base.update(kw)
    return BenchConfig(**base)


def _records(out: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "cache").rglob("*.json")}


def test_interrupted_run_resumes_without_recomputing(tmp_path: Path, fake_task: None) -> None:
    pytest.importorskip("imageio_ffmpeg")
    config = _config(tmp_path, stop_after=4)
    first: list[str] = []
    config.on_point = lambda rec: first.append(rec["key"])
    with pytest.raises(BenchStopped):
        run_bench(config)
    before = _records(config.output)
    assert len(first) == 4
    assert len(before) == 3 + 4  # three Original points, four codec points
    second: list[str] = []
    config2 = _config(tmp_path / "x", output=config.output, features_dir=config.features_dir,
                      on_point=lambda rec: second.append(rec["key"]))
    summary = run_bench(config2)
    # 3 samples x (raw@0 + hevc@22 + hevc@42) = 9 codec points + 3 Original points
    assert summary.total_points == 12
    assert summary.cached == 3 + 4
    assert summary.computed == 9 - 4
    assert not set(first) & set(second)
    after = _records(config.output)
    for path, stamp in before.items():
        assert after[path] == stamp  # finished points were not rewritten
    # A third run computes nothing.
    third = run_bench(_config(tmp_path / "y", output=config.output, features_dir=config.features_dir))
    assert (third.computed, third.cached, third.failed) == (0, 12, [])


def test_changed_features_are_recomputed(tmp_path: Path, fake_task: None) -> None:
    config = _config(tmp_path, codecs=["raw"])
    assert run_bench(config).computed == 6  # 3 Original + 3 raw points
    np.save(config.features_dir / "dinov2-cls" / "s1.npy", np.ones((16, 24), np.float32))
    summary = run_bench(config)
    assert (summary.computed, summary.cached) == (2, 4)  # s1's Original and raw points


def test_reports_have_the_table3_layout(tmp_path: Path, fake_task: None) -> None:
    pytest.importorskip("imageio_ffmpeg")
    config = _config(tmp_path, codecs=["raw", "hevc", "vtm"], plots=True)
    summary = run_bench(config)
    out = config.output
    for name in ("results.json", "points.csv", "samples.csv", "table3.md", "report.md",
                 "rate_accuracy.png", "rate_accuracy.svg", "rate_accuracy_drop.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    pts = {(p["codec"], p["rate"]): p for p in results["points"]}
    assert pts[("original", 0)]["bpfp"] == 32.0 and pts[("original", 0)]["metric"] == 100.0
    assert pts[("raw", 0)]["bpfp"] == 32.0
    assert pts[("raw", 0)]["feature_mse"] == 0.0 and pts[("raw", 0)]["metric"] == 100.0
    assert pts[("raw", 0)]["accuracy_drop"] == 0.0
    assert pts[("hevc", 22)]["bpfp"] > pts[("hevc", 42)]["bpfp"] > 0
    assert pts[("hevc", 42)]["feature_mse"] > pts[("hevc", 22)]["feature_mse"] > 0
    # BPFP of a point is the mean of its samples' BPFP, recomputed here from samples.csv.
    with open(out / "samples.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["codec"] == "hevc" and r["rate"] == "22"]
    assert len(rows) == 3
    assert pts[("hevc", 22)]["bpfp"] == pytest.approx(np.mean([float(r["bpfp"]) for r in rows]))
    assert all(float(r["bpfp"]) == int(r["payload_bits"]) / int(r["feature_points"]) for r in rows)
    lines = (out / "table3.md").read_text().splitlines()
    assert lines[0].startswith("| Codec | Rate | Cls BPFP | Cls Accuracy | Cls MSE |")
    assert lines[2].startswith("| Original | - | 32.00 | 100.00 | 0 |")
    assert lines[3].startswith("| raw |")
    if "vtm" in summary.skipped_codecs:
        assert "codec vtm:" in (out / "report.md").read_text()
    bd = [e for e in results["bd_rate"] if e["anchor"] == "raw" and e["test"] == "hevc"]
    assert len(bd) == 1


def test_unknown_codec_and_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--codecs", "nope", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitfc: error: unknown codec 'nope'") and err.count("\n") == 1
    assert main(["bench", "--samples", "0", "-o", str(tmp_path / "o")]) == 2
    assert "--samples" in capsys.readouterr().err
    assert main(["bench", "--splits", "dinov2-cls", "--codecs", "raw", "--features", str(tmp_path / "none"),
                 "-o", str(tmp_path / "o")]) == 2
    assert "features folder not found" in capsys.readouterr().err


def test_bench_codecs_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "codecs.json"
    assert main(["bench-codecs", "--codecs", "raw", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["shape"] == [257, 1536]
    (point,) = result["points"]
    assert point["codec"] == "raw" and point["bpfp"] == 32.0 and point["feature_mse"] == 0.0
    assert point["payload_bytes"] == 257 * 1536 * 4
    # the integrity check's cost beside the codec times; memory from its own pass
    assert point["digest_ms"] > 0 and point["peak_rss_mb"] > 0 and point["peak_alloc_mb"] >= 0
    out = capsys.readouterr().out
    assert "| encode ms | decode ms | digest ms | peak RSS MB | peak alloc MB |" in out
    assert "| raw | 0 | 32.0000 | 0 |" in out


def test_no_stray_environment_reads() -> None:
    src = Path(__file__).parents[1] / "common" / "bench"
    assert all("os.environ" not in p.read_text() for p in src.glob("*.py"))
    assert os.sep  # keep the os import meaningful on all platforms


# ----------------------------------------------------------------------------- real tiny models


def test_end_to_end_tiny_models_in_worker_processes(tmp_path: Path) -> None:
    """raw + hevc on the tiny DINOv2 Cls model, 2 samples, two spawned workers."""
    pytest.importorskip("imageio_ffmpeg")
    config = BenchConfig(splits=["dinov2-cls"], codecs=["raw", "hevc"], output=tmp_path / "out", samples=2,
                         jobs=2, qps=[27, 42], plots=False, progress=False)
    summary = run_bench(config)
    assert (summary.computed, summary.cached, summary.failed) == (2 + 2 * 3, 0, [])
    results = json.loads((config.output / "results.json").read_text())
    pts = {(p["codec"], p["rate"]): p for p in results["points"]}
    assert pts[("original", 0)]["metric"] == 100.0 and pts[("original", 0)]["metric_name"] == "top-1 accuracy"
    assert pts[("raw", 0)]["metric"] == 100.0 and pts[("raw", 0)]["feature_mse"] == 0.0
    assert pts[("hevc", 27)]["bpfp"] > pts[("hevc", 42)]["bpfp"] > 0
    assert pts[("hevc", 42)]["peak_rss_mb"] > 0 and pts[("hevc", 42)]["encode_ms"] > 0
    pids = {s["worker_pid"] for s in results["samples"] if s["codec"] == "hevc"}
    assert os.getpid() not in pids  # codec points ran in worker processes
    features = sorted((config.output / "features" / "dinov2-cls").glob("*.npy"))
    assert len(features) == 2
    again = run_bench(config)
    assert (again.computed, again.cached) == (0, 8)


def test_killed_cli_run_resumes_without_recomputing(tmp_path: Path) -> None:
    """SIGKILL a real ``splitfc bench`` half-way; the same command then computes only the rest."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "out"
    args = ["--splits", "dinov2-cls", "--codecs", "hevc", "--samples", "4", "--no-plots", "--quiet", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "splitfc", "bench", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    codec_dir = out / "cache" / "dinov2-cls" / "hevc"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if codec_dir.exists() and len(list(codec_dir.rglob("*.json"))) >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done_before = {str(p): p.read_bytes() for p in codec_dir.rglob("*.json")}
    assert 3 <= len(done_before) < 20, "the run was not killed half-way"
    computed: list[dict[str, Any]] = []
    config = BenchConfig(splits=["dinov2-cls"], codecs=["hevc"], output=out, samples=4, plots=False,
                         progress=False, on_point=computed.append)
    summary = run_bench(config)
    assert summary.failed == []
    assert summary.total_points == 4 + 20
    assert summary.computed == 20 - len(done_before)
    assert summary.cached == 4 + len(done_before)
    for path, data in done_before.items():
        assert Path(path).read_bytes() == data
    assert len(list(codec_dir.rglob("*.json"))) == 20


def test_task_metric_is_scored_over_all_samples_of_a_point(tmp_path: Path, fake_task: None) -> None:
    from splitfc.common.bench.report import score_point

    cache = ResultCache(tmp_path)
    refs = {f"s{i}": TaskOutput(task="cls", label=i) for i in range(3)}
    records = []
    for i, label in enumerate([0, 1, 7]):  # the third sample disagrees with its reference
        rec = {"split": "dinov2-cls", "codec": "x", "rate": 1, "sample": f"s{i}", "key": point_key({"i": i}),
               "output": {"task": "cls", "label": label, "choices": []}}
        cache.put(rec, {"probs": np.zeros(2, np.float32)})
        records.append(cache.get("dinov2-cls", "x", 1, f"s{i}", rec["key"]))
    scored, per_sample = score_point("dinov2-cls", records, refs, cache)
    assert scored is not None and scored.value == pytest.approx(200 / 3)
    assert per_sample == [100.0, 100.0, 0.0]
    # a sample without a reference is left out of the score, not counted as wrong
    scored, per_sample = score_point("dinov2-cls", records, {"s0": refs["s0"]}, cache)
    assert scored is not None and scored.value == 100.0 and per_sample == [100.0, None, None]
