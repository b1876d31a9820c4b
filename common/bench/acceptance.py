"""BD-rate against the best of several anchor codecs, on task accuracy and on feature MSE (issue 15).

A new codec is judged against the *best* of the frame codecs (``vtm``, ``vvenc``, ``hevc`` by
default), per split. The anchor is their **rate-quality envelope**: all their rate points pooled
and reduced to the Pareto frontier (at each quality level the cheapest point any of them reaches;
`bdrate.monotone_frontier` on the pooled points), the "convex hull" anchor of adaptive-streaming
BD-rates (AOM CTC, Netflix's per-title hull) without the convexity step, so no measured point is
left out that beats the others. A codec with a negative BD-rate against the envelope needs fewer
bits than whichever anchor is best at each quality. Reported beside it, as cross-checks: the
BD-rate against each anchor alone, and the worst (largest) of those, which is not the envelope
figure (each anchor is integrated over its own overlap) but says the same when one anchor is best
everywhere; the -30 % target counts as met only when both are at most -30 % (`acceptance`).

Two quality axes, both higher-is-better:

* task accuracy (``analysis.as_quality``: the metric, or 1/RMSE, 1/FID), as in ``report.bd_rates``;
* feature fidelity, ``-10 log10(feature MSE)`` in dB (the feature-space PSNR without a peak), so
  the feature MSE is reported beside task accuracy with the same machinery (issue 15: "Report
  feature MSE beside task accuracy").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from splitfc.common.bench.analysis import as_quality
from splitfc.common.bench.bdrate import bd_rate

DEFAULT_ANCHORS = ("vtm", "vvenc", "hevc")
"""The frame codecs whose best a new codec is judged against."""
REFERENCE_CODECS = ("hyperprior",)
"""Codecs reported as a second anchor beside the envelope (issue 15: "report the figure against hyperprior")."""
TARGET_BD_RATE = -30.0
"""Issue 15's acceptance: at most -30 % against the best of the anchors on every split."""

Curve = list[tuple[float, float]]
"""(BPFP, quality) points of one codec on one split."""


def feature_quality(mse: float | None) -> float | None:
    """``-10 log10(mse)`` in dB (higher is better); None for a missing or non-positive MSE."""
    if mse is None or not math.isfinite(mse) or mse <= 0:
        return None
    return -10.0 * math.log10(mse)


def curves_of(points: list[dict[str, Any]], split: str, codecs: Sequence[str], axis: str,
              higher_is_better: bool) -> dict[str, Curve]:
    """Each codec's (BPFP, quality) points on ``split``; ``axis`` is ``"task"`` or ``"feature_mse"``.

    Points without a score, with BPFP <= 0 or a non-finite quality are left out.
    """
    if axis not in ("task", "feature_mse"):
        raise ValueError(f"axis must be 'task' or 'feature_mse', got {axis!r}")
    out: dict[str, Curve] = {}
    for codec in codecs:
        curve: Curve = []
        for p in points:
            if p["split"] != split or p["codec"] != codec or not p.get("bpfp") or p["bpfp"] <= 0:
                continue
            if axis == "task":
                q = None if p.get("metric") is None else as_quality(p["metric"], higher_is_better)
            else:
                q = feature_quality(p.get("feature_mse"))
            if q is not None and math.isfinite(q):
                curve.append((float(p["bpfp"]), float(q)))
        out[codec] = sorted(curve)
    return out


def dominates(anchor: Curve, test: Curve) -> bool:
    """True when every anchor point is matched or beaten by some test point (rate <= and quality >=).

    Says which codec is better where BD-rate is undefined because the quality ranges do not overlap
    (e.g. the test's cheapest point already scores above the anchor's best).
    """
    return bool(anchor) and bool(test) and all(any(rt <= ra and qt >= qa for rt, qt in test) for ra, qa in anchor)


def _bd(anchor: Curve, test: Curve) -> dict[str, Any]:
    if len(anchor) < 2 or len(test) < 2:
        out: dict[str, Any] = {"bd_rate": None, "overlap": None, "notes": ["fewer than 2 scored rate points"]}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = bd_rate([r for r, _ in anchor], [q for _, q in anchor],
                          [r for r, _ in test], [q for _, q in test]).as_dict()
    out["dominates"] = dominates(anchor, test)
    return out


def best_of(curves: dict[str, Curve], test: str, anchors: Sequence[str],
            references: Sequence[str] = REFERENCE_CODECS) -> dict[str, Any]:
    """BD-rates (%) of ``test`` against the envelope of ``anchors``, each anchor alone, and ``references``.

    ``curves`` holds every codec's curve on one split and axis (`curves_of`); anchors without points
    are left out (and listed as ``anchors``: those used). Returns ``{"anchors", "best_of", "per_anchor",
    "worst_single", "references"}``; each BD-rate is a ``BDRateResult.as_dict()`` plus ``dominates``
    (`dominates`: shown as "dominates" where the BD-rate is undefined).
    """
    used = [a for a in anchors if a != test and curves.get(a)]
    pooled = sorted(pt for a in used for pt in curves[a])
    per_anchor = {a: _bd(curves[a], curves.get(test, [])) for a in used}
    singles = [e["bd_rate"] for e in per_anchor.values() if e["bd_rate"] is not None]
    return {
        "anchors": used,
        "best_of": _bd(pooled, curves.get(test, [])) if used else
        {"bd_rate": None, "overlap": None, "notes": ["no anchor codec has scored points"]},
        "per_anchor": per_anchor,
        "worst_single": max(singles) if singles else None,
        "references": {r: _bd(curves[r], curves.get(test, [])) for r in references
                       if r != test and curves.get(r)},
    }


def acceptance(points: list[dict[str, Any]], codecs: Sequence[str], metrics: dict[str, dict[str, Any]],
               anchors: Sequence[str] = DEFAULT_ANCHORS) -> list[dict[str, Any]]:
    """For every split and every codec run that is not an anchor: `best_of` on task accuracy and feature MSE.

    ``points`` are `report.build_results`' aggregated points, ``metrics`` its per-split metric
    info (``higher_is_better``). ``meets_target`` (on task accuracy) is None when the BD-rate against
    the envelope is undefined, else True only when it and every defined single-anchor BD-rate are at
    most `TARGET_BD_RATE`: beating the best of the anchors implies beating each, and with few samples
    (accuracy in steps of 100/N) the envelope's wider overlap alone can give a lower figure than an
    anchor alone.
    """
    present = [a for a in anchors if a in codecs]
    out: list[dict[str, Any]] = []
    if not present:
        return out
    for split, info in metrics.items():
        task = curves_of(points, split, codecs, "task", info["higher_is_better"])
        mse = curves_of(points, split, codecs, "feature_mse", True)
        for test in codecs:
            if test in present:
                continue
            entry = {"split": split, "test": test, "task": best_of(task, test, present),
                     "feature_mse": best_of(mse, test, present)}
            bd = entry["task"]["best_of"]["bd_rate"]
            worst = entry["task"]["worst_single"]
            entry["meets_target"] = None if bd is None else (
                bd <= TARGET_BD_RATE and (worst is None or worst <= TARGET_BD_RATE))
            out.append(entry)
    return out


def _cell(e: dict[str, Any] | None) -> str:
    if e is None:
        return "-"
    if e.get("bd_rate") is None:
        return "dominates" if e.get("dominates") else "-"
    return f"{e['bd_rate']:+.1f}"


def acceptance_markdown(entries: list[dict[str, Any]], split_label: dict[str, str] | None = None) -> str:
    """One Markdown table: per split and test codec, task and feature-MSE BD-rates vs the envelope and references."""
    if not entries:
        return ""
    label = split_label or {}
    anchors = list(dict.fromkeys(a for e in entries for a in e["task"]["anchors"]))
    refs = list(dict.fromkeys(r for e in entries for r in e["task"]["references"]))
    head = (["Test codec", "Split", f"task vs best of {'/'.join(anchors)}", *[f"task vs {a}" for a in anchors],
             *[f"task vs {r}" for r in refs], f"feature MSE vs best of {'/'.join(anchors)}",
             *[f"feature MSE vs {r}" for r in refs], f"<= {TARGET_BD_RATE:g} %"])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    notes: list[str] = []
    for e in entries:
        t, m = e["task"], e["feature_mse"]
        ok = {None: "-", True: "yes", False: "no"}[e["meets_target"]]
        row = [e["test"], label.get(e["split"], e["split"]), _cell(t["best_of"]),
               *[_cell(t["per_anchor"].get(a)) for a in anchors], *[_cell(t["references"].get(r)) for r in refs],
               _cell(m["best_of"]), *[_cell(m["references"].get(r)) for r in refs], ok]
        lines.append("| " + " | ".join(row) + " |")
        if t["best_of"]["notes"]:
            notes.append(f"- {e['split']}, {e['test']} vs best of (task): " + "; ".join(t["best_of"]["notes"]))
    return "\n".join(lines + (["", *notes] if notes else []))


def summary_lines(entries: list[dict[str, Any]]) -> list[str]:
    """One line per (split, test codec) for the command's output."""
    lines = []
    for e in entries:
        t, m = e["task"], e["feature_mse"]
        refs = ", ".join(f"vs {r} {_cell(v)} %" for r, v in t["references"].items())
        lines.append(
            f"  BD-rate {e['split']} {e['test']}: task vs best of {'/'.join(t['anchors'])} {_cell(t['best_of'])} %"
            + (f" ({refs})" if refs else "")
            + f"; feature MSE vs best of {_cell(m['best_of'])} %"
            + {None: "", True: f" [meets <= {TARGET_BD_RATE:g} %]", False: f" [misses <= {TARGET_BD_RATE:g} %]"}[
                e["meets_target"]]
        )
    return lines
