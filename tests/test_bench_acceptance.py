"""BD-rate against the best of several anchors (`common.bench.acceptance`), on synthetic curves.

The anchors cross: ``vvenc`` is cheaper at low accuracy, ``hevc`` at high accuracy. The test codec
costs exactly 0.8x the envelope (the cheaper of the two at every quality), so its BD-rate against
the best of them is -20 % to rounding; against either anchor alone, against the first, or against
the more expensive one, it is well below -20 %. A wrong anchor choice cannot give -20 %.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from splitfc.common.bench.acceptance import (
    TARGET_BD_RATE,
    acceptance,
    acceptance_markdown,
    best_of,
    curves_of,
    dominates,
    feature_quality,
    summary_lines,
)

QUALITY = [20.0, 40.0, 60.0, 80.0, 95.0]
# vvenc: cheap at low quality, expensive at high; hevc: the reverse. They cross between 40 and 80.
VVENC = [0.2, 0.4, 1.4, 3.0, 6.0]
HEVC = [0.5, 0.8, 1.2, 1.8, 3.0]


def _points(codec: str, rates: list[float], quality: list[float], mse: list[float], split: str = "dinov2-cls"
            ) -> list[dict[str, Any]]:
    return [{"split": split, "codec": codec, "rate": i, "bpfp": r, "metric": q, "feature_mse": m}
            for i, (r, q, m) in enumerate(zip(rates, quality, mse, strict=True))]


def _envelope() -> list[float]:
    return [min(a, b) for a, b in zip(VVENC, HEVC, strict=True)]


def _scenario() -> list[dict[str, Any]]:
    mse = [8.0, 4.0, 2.0, 1.0, 0.5]
    native = [0.8 * r for r in _envelope()]
    return (_points("vvenc", VVENC, QUALITY, mse) + _points("hevc", HEVC, QUALITY, mse)
            + _points("native", native, QUALITY, mse)
            + _points("hyperprior", [r * 2 for r in HEVC], QUALITY, [m * 3 for m in mse]))


METRICS = {"dinov2-cls": {"name": "top-1 accuracy", "higher_is_better": True}}


def test_envelope_anchor_gives_the_ratio_to_the_best_anchor_at_each_quality() -> None:
    entries = acceptance(_scenario(), ["vvenc", "hevc", "hyperprior", "native"], METRICS)
    native = next(e for e in entries if e["test"] == "native")
    task = native["task"]
    assert task["anchors"] == ["vvenc", "hevc"]  # vtm not run: left out
    assert task["best_of"]["bd_rate"] == pytest.approx(-20.0, abs=1e-6)
    # Each anchor alone is beaten by more (it is worse than the envelope somewhere): a wrong anchor.
    for anchor in ("vvenc", "hevc"):
        assert task["per_anchor"][anchor]["bd_rate"] < -25.0
    assert task["worst_single"] == max(task["per_anchor"][a]["bd_rate"] for a in ("vvenc", "hevc"))
    assert task["worst_single"] < -25.0
    # Against hyperprior (twice hevc's rate): well below, and reported.
    assert task["references"]["hyperprior"]["bd_rate"] < -50.0
    assert native["meets_target"] is False  # -20 % is not <= -30 %
    # Feature MSE axis: same rates and MSEs, so the same -20 % against the envelope.
    assert native["feature_mse"]["best_of"]["bd_rate"] == pytest.approx(-20.0, abs=1e-6)


def test_meets_target_and_single_anchor_equals_envelope() -> None:
    pts = _points("hevc", HEVC, QUALITY, [1.0] * 5) + _points("native", [0.5 * r for r in HEVC], QUALITY, [1.0] * 5)
    entries = acceptance(pts, ["hevc", "native"], METRICS)
    (native,) = entries
    assert native["task"]["best_of"]["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert native["task"]["per_anchor"]["hevc"]["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert native["meets_target"] is True and TARGET_BD_RATE == -30.0
    # Equal MSE everywhere: no increasing feature-quality curve, so undefined, not a number.
    assert native["feature_mse"]["best_of"]["bd_rate"] is None


def test_lower_is_better_metric_uses_reciprocal() -> None:
    rmse = [1 / q for q in QUALITY]  # Dpt-like: RMSE falls as the rate grows
    pts = (_points("hevc", HEVC, rmse, [1.0] * 5, "dinov2-dpt")
           + _points("native", [0.8 * r for r in HEVC], rmse, [1.0] * 5, "dinov2-dpt"))
    entries = acceptance(pts, ["hevc", "native"], {"dinov2-dpt": {"name": "RMSE", "higher_is_better": False}})
    assert entries[0]["task"]["best_of"]["bd_rate"] == pytest.approx(-20.0, abs=1e-6)


def test_no_anchor_run_gives_no_entries() -> None:
    pts = _points("native", HEVC, QUALITY, [1.0] * 5)
    assert acceptance(pts, ["native", "hyperprior"], METRICS) == []
    assert best_of({"native": [(1.0, 1.0), (2.0, 2.0)]}, "native", ["hevc"])["best_of"]["bd_rate"] is None


def test_feature_quality_and_curves() -> None:
    assert feature_quality(0.01) == pytest.approx(20.0)
    assert feature_quality(0.0) is None and feature_quality(None) is None and feature_quality(math.nan) is None
    curves = curves_of(_scenario(), "dinov2-cls", ["hevc"], "feature_mse", True)
    assert [q for _, q in curves["hevc"]] == pytest.approx([-10 * math.log10(m) for m in (8, 4, 2, 1, 0.5)])
    with pytest.raises(ValueError, match="axis"):
        curves_of([], "dinov2-cls", ["hevc"], "psnr", True)


def test_markdown_and_summary_lines_show_the_figures() -> None:
    entries = acceptance(_scenario(), ["vvenc", "hevc", "hyperprior", "native"], METRICS)
    md = acceptance_markdown(entries, {"dinov2-cls": "Cls"})
    row = next(line for line in md.splitlines() if line.startswith("| native"))
    assert "| Cls | -20.0 |" in row and row.endswith("| no |")
    assert "task vs best of vvenc/hevc" in md and "feature MSE vs hyperprior" in md
    lines = summary_lines(entries)
    assert any("native: task vs best of vvenc/hevc -20.0 %" in line and "misses" in line for line in lines)


def test_target_needs_every_single_anchor_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """An envelope figure under -30 % with one anchor alone above it is not a pass."""
    from splitfc.common.bench import acceptance as mod

    forged: dict[str, Any] = {"anchors": ["vvenc", "hevc"], "best_of": {"bd_rate": -40.0, "overlap": None, "notes": []},
                              "per_anchor": {}, "worst_single": -10.0, "references": {}}
    monkeypatch.setattr(mod, "best_of", lambda *args, **kwargs: forged)

    def native_entry() -> dict[str, Any]:
        return next(e for e in mod.acceptance(_scenario(), ["vvenc", "hevc", "native"], METRICS)
                    if e["test"] == "native")

    assert native_entry()["meets_target"] is False
    forged["worst_single"] = -35.0
    assert native_entry()["meets_target"] is True
    forged["worst_single"] = None  # no single anchor defined: the envelope decides
    assert native_entry()["meets_target"] is True


def test_no_overlap_but_better_everywhere_is_shown_as_dominates() -> None:
    """Small Cls at 7c1a1d1: native's cheapest point scores above every hevc point; BD-rate is undefined."""
    pts = (_points("hevc", [0.03, 0.04, 0.09, 0.24], [25.0, 50.0, 50.0, 50.0], [0.26, 0.1, 0.03, 0.02])
           + _points("native", [0.029, 0.12, 1.58], [75.0, 100.0, 100.0], [0.016, 0.006, 0.0003]))
    (native,) = acceptance(pts, ["hevc", "native"], METRICS)
    assert native["task"]["best_of"]["bd_rate"] is None and native["task"]["best_of"]["dominates"] is True
    assert native["meets_target"] is None  # no figure: not counted as a pass
    row = next(line for line in acceptance_markdown([native]).splitlines() if line.startswith("| native"))
    assert "| dominates |" in row
    # The reverse is not dominance, and overlapping curves are not marked.
    assert dominates([(0.029, 75.0), (1.58, 100.0)], [(0.03, 25.0), (0.24, 50.0)]) is False
    entries = acceptance(_scenario(), ["vvenc", "hevc", "native"], METRICS)
    assert next(e for e in entries if e["test"] == "native")["task"]["best_of"]["dominates"] is True
