"""``splitfc bench-preprocess`` writes its figures as JSON (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from splitfc.cli import main


def test_bench_preprocess_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pre.json"
    assert main(["bench-preprocess", "--split", "dinov2-cls", "--repeat", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["shape"] == [257, 1536] and r["frame_shape"] == [257, 1536]
    assert r["to_frame_ms"] > 0 and r["from_frame_ms"] > 0
    frame_mib, feature_mib = 257 * 1536 * 2 / 2**20, 257 * 1536 * 4 / 2**20
    # the outputs themselves are traced: a peak below them would mean nothing was measured
    assert frame_mib * 0.99 <= r["to_frame_peak_mib"] <= frame_mib * 2 + 8.5
    assert feature_mib * 0.99 <= r["from_frame_peak_mib"] <= feature_mib + 8.5
