"""`splitfc bench-codecs --target-bpfp`: the rate search and the one-core pinning (no timings asserted)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from splitfc.common.bench import codec_micro
from splitfc.common.bench.codec_micro import one_core, rate_for_bpfp, run_speed_bench, synthetic_features
from splitfc.common.codecs import CODECS
from splitfc.common.errors import SplitfcError


def _fake_bpfp(monkeypatch: pytest.MonkeyPatch, curve: dict[str, object]) -> list[int]:
    calls: list[int] = []

    def fake(features: np.ndarray, split_id: str, codec_name: str, rate: int) -> float:
        calls.append(rate)
        return curve[codec_name](rate)  # type: ignore[operator]

    monkeypatch.setattr(codec_micro, "bpfp_at", fake)
    return calls


CURVES = {
    "hevc": lambda qp: 20.0 * 2.0 ** (-qp / 6.0),  # QP knob: higher = fewer bits
    "hyperprior": lambda q: 0.05 * 1.7 ** q,  # quality knob: higher = more bits
}


@pytest.mark.parametrize("codec", ["hevc", "hyperprior"])
@pytest.mark.parametrize("target", [0.3, 1.0, 2.2])
def test_search_finds_the_closest_rate_in_log_bpfp(monkeypatch: pytest.MonkeyPatch, codec: str, target: float) -> None:
    calls = _fake_bpfp(monkeypatch, CURVES)
    lo, hi = CODECS[codec].rate_bounds
    rate, bpfp, tried = rate_for_bpfp(np.zeros(4, np.float32), "dinov2-cls", codec, target)
    brute = min(range(lo, hi + 1), key=lambda r: abs(math.log(CURVES[codec](r) / target)))  # type: ignore[operator]
    assert rate == brute
    assert bpfp == pytest.approx(CURVES[codec](rate))  # type: ignore[operator]
    assert len(set(calls)) <= math.ceil(math.log2(hi - lo + 1)) + 2  # bisection, not a sweep
    assert dict(tried)[rate] == bpfp


def test_target_outside_the_range_gives_the_end_of_the_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_bpfp(monkeypatch, CURVES)
    lo, hi = CODECS["hevc"].rate_bounds
    assert rate_for_bpfp(np.zeros(4, np.float32), "dinov2-cls", "hevc", 1e6)[0] == lo
    assert rate_for_bpfp(np.zeros(4, np.float32), "dinov2-cls", "hevc", 1e-9)[0] == hi


def test_bad_targets_and_knobless_codecs_are_refused() -> None:
    with pytest.raises(SplitfcError, match="positive"):
        rate_for_bpfp(np.zeros(4, np.float32), "dinov2-cls", "hevc", 0.0)
    with pytest.raises(SplitfcError, match="no rate knob"):
        rate_for_bpfp(np.zeros(4, np.float32), "dinov2-cls", "raw", 1.0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_one_core_pins_and_restores() -> None:
    before = os.sched_getaffinity(0)
    with one_core() as cpu:
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
    with one_core(False) as cpu:
        assert cpu is None and os.sched_getaffinity(0) == before


def test_speed_bench_on_native_reports_the_searched_point(tmp_path: Path) -> None:
    """Real native codec on the smallest paper shape (sd3-tti 16x128x128): BPFP near 1 and consistent rows."""
    result = run_speed_bench(["sd3-tti"], ["native"], 1.0, repeats=1, pin_one_core=False)
    (row,) = result["rows"]  # type: ignore[misc]
    assert row["feature_points"] == 16 * 128 * 128
    assert 0.5 < row["bpfp"] < 2.0
    assert row["total_ms"] == pytest.approx(row["encode_ms"] + row["decode_ms"])
    assert row["points_per_s"] == pytest.approx(row["feature_points"] / (row["total_ms"] / 1e3))
    assert [row["rate"], row["bpfp"]] in row["tried"]
    json.dumps(result)  # JSON-serialisable as written by the CLI


def test_cli_refuses_rates_with_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from splitfc.cli import main

    code = main(["bench-codecs", "--codecs", "native", "--rates", "32", "--target-bpfp", "1",
                 "-o", str(tmp_path / "x.json")])
    assert code == 2 and "exclude each other" in capsys.readouterr().err


def test_correlated_features_share_principal_directions_across_seeds() -> None:
    """sd3-tti (16 channels first): one fixed mixing, so a PCA fitted on seed 1 compacts seed 0."""
    def channel_rows(x: np.ndarray) -> np.ndarray:
        return x.reshape(16, -1).astype(np.float64)

    plain = channel_rows(synthetic_features("sd3-tti", 0))
    mixed = channel_rows(synthetic_features("sd3-tti", 0, correlated=True))
    train = channel_rows(synthetic_features("sd3-tti", 1, correlated=True))
    assert np.sqrt(np.mean(mixed ** 2)) == pytest.approx(np.sqrt(np.mean(plain ** 2)), rel=0.15)
    _, vecs = np.linalg.eigh(np.cov(train))
    top = vecs[:, -1]  # the training seed's first principal direction
    share = float(np.var(top @ mixed) / np.var(mixed, axis=1).sum())
    assert share > 0.4  # s_1^2 / sum s_k^2 = 1 / 1.58 for 16 channels; plain channels would give ~1/16
    assert float(np.var(top @ plain) / np.var(plain, axis=1).sum()) < 0.15
    assert not np.array_equal(mixed, channel_rows(synthetic_features("sd3-tti", 2, correlated=True)))


def test_cli_correlated_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from splitfc.cli import main

    assert main(["bench-codecs", "--codecs", "native", "--correlated", "-o", str(tmp_path / "x.json")]) == 2
    assert "--correlated needs --target-bpfp" in capsys.readouterr().err
