"""Benchmark results from the cache: JSON, CSV and Markdown (paper Table 3 layout).

``build_results`` reads every finished record, scores each (split, codec, rate)
point against the Original point's outputs, and adds the analyses (AD, R²,
BD-rate, complexity). ``write_all`` writes ``results.json``, ``points.csv``
(one row per rate point), ``samples.csv`` (one row per sample), ``table3.md``
(Table 3 alone), ``report.md`` (all tables) and the plots.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitfc.common.bench import task
from splitfc.common.bench.acceptance import DEFAULT_ANCHORS, acceptance, acceptance_markdown
from splitfc.common.bench.aggregate import aggregate_records, group_failures
from splitfc.common.bench.analysis import accuracy_drop, as_quality, r_squared
from splitfc.common.bench.bdrate import bd_rate
from splitfc.common.bench.cache import ResultCache, atomic_write_bytes
from splitfc.common.errors import SplitfcError
from splitfc.common.tasks import task_of

if TYPE_CHECKING:
    from splitfc.common.bench.runner import BenchConfig, BenchSummary, PointJob

ORIGINAL = "original"
POINT_COLUMNS = (
    "split", "codec", "rate_name", "rate", "samples", "bpfp", "bpfp_pooled", "bpfp_with_header", "metric_name",
    "metric", "accuracy_drop", "feature_mse", "encode_ms", "decode_ms", "tail_ms", "peak_rss_mb", "peak_alloc_mb",
    "payload_bytes_total", "metric_vs_truth",
)
SAMPLE_COLUMNS = (
    "split", "codec", "rate", "sample", "bpfp", "bpfp_with_header", "payload_bits", "header_bytes", "feature_points",
    "metric", "feature_mse", "encode_ms", "decode_ms", "tail_ms", "peak_rss_mb", "peak_alloc_mb", "feature_sha256",
)


def _rate_name(codec: str) -> str:
    if codec == ORIGINAL:
        return "none"
    from splitfc.common.codecs import CODECS

    return CODECS[codec].rate_name


def score_point(split: str, records: list[dict[str, Any]], refs: dict[str, Any],
                cache_: ResultCache) -> tuple[task.Score | None, list[float | None]]:
    """Dataset-level score of a point and per-sample metric values, against the reference outputs."""
    outputs, references, per_sample = [], [], []
    for rec in records:
        ref = refs.get(rec["sample"])
        if ref is None:
            per_sample.append(None)
            continue
        out = task.output_from_cache(rec["output"], cache_.load_arrays(rec))
        outputs.append(out)
        references.append(ref)
        per_sample.append(task.score(split, [out], [ref]).value)
    if not outputs:
        return None, per_sample
    return task.score(split, outputs, references), per_sample


def split_targets(config: BenchConfig, split: str) -> dict[str, int]:
    """Ground truth by sample name for a split's features (``small`` CSR/Cls), from their manifest; else ``{}``."""
    from splitfc.common.bench.features import feature_targets, find_feature_dir

    folder = find_feature_dir(config.features_dir, split) if config.features_dir else config.output / "features" / split
    return feature_targets(folder) if folder is not None else {}


def score_vs_truth(split: str, records: list[dict[str, Any]], targets: dict[str, int],
                   cache_: ResultCache) -> float | None:
    """The task metric of a point against ground truth, when every sample of it has a target; else None."""
    from splitfc.common.metrics import score_outputs

    if not records or any(rec["sample"] not in targets for rec in records):
        return None
    outputs = [task.output_from_cache(rec["output"], cache_.load_arrays(rec)) for rec in records]
    return float(score_outputs(split, outputs, [targets[rec["sample"]] for rec in records])["value"])


def build_results(config: BenchConfig, cache_: ResultCache, jobs: list[PointJob], codecs: list[str],
                  summary: BenchSummary) -> dict[str, Any]:
    """Aggregate everything in the cache for ``jobs`` into one results dict."""
    by_point: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    split_order: list[str] = []
    for job in jobs:
        if job.split not in split_order:
            split_order.append(job.split)
        rec = cache_.get(job.split, job.codec, job.rate, job.sample, job.key)
        if rec is not None:
            by_point[(job.split, job.codec, job.rate)].append(rec)
    points: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    metrics: dict[str, dict[str, Any]] = {}
    for split in split_order:
        split_task = task_of(split)
        name, higher = split_task.metric, split_task.higher_is_better
        ref_records = by_point.get((split, ORIGINAL, 0), [])
        refs = {r["sample"]: task.output_from_cache(r["output"], cache_.load_arrays(r)) for r in ref_records}
        original_metric = None
        targets = split_targets(config, split)
        for codec in [ORIGINAL, *codecs]:
            for (s, c, rate), recs in by_point.items():
                if s != split or c != codec:
                    continue
                try:
                    scored, per_sample = score_point(split, recs, refs, cache_)
                    error = None
                except (SplitfcError, ValueError) as exc:
                    scored, per_sample, error = None, [None] * len(recs), str(exc)
                metric = None
                if scored is not None:
                    metric, name, higher = scored
                point = {"split": split, "codec": codec, "rate_name": _rate_name(codec), "rate": rate,
                         "metric_name": name, "metric": metric, **aggregate_records(recs)}
                if error is not None:
                    point["metric_error"] = error
                if targets:
                    # small CSR/Cls: the same outputs scored against the answer key / labels as well.
                    point["metric_vs_truth"] = score_vs_truth(split, recs, targets, cache_)
                if codec == ORIGINAL:
                    original_metric = metric
                points.append(point)
                for rec, m in zip(recs, per_sample, strict=True):
                    row = {k: v for k, v in rec.items() if k not in ("output", "outputs_file", "key")}
                    row["metric"] = m
                    samples.append(row)
        metrics[split] = {"name": name, "higher_is_better": higher}
        for p in points:
            if p["split"] == split:
                p["metric_name"] = name
                # Tasks without an accuracy drop (TTI: Original FID is 0) are left out of R-AD as in the paper.
                p["accuracy_drop"] = (
                    None if original_metric is None or p["metric"] is None or not split_task.accuracy_drop
                    else accuracy_drop(p["metric"], original_metric, higher)
                )
    return {
        "config": {
            "splits": split_order, "codecs": codecs, "preset": config.preset,
            "features_dir": str(config.features_dir) if config.features_dir else None,
            "samples": config.samples, "jobs": config.jobs, "anchor": config.anchor or default_anchor(codecs),
            "best_of": list(config.best_of or DEFAULT_ANCHORS),
        },
        "metrics": metrics,
        "points": points,
        "samples": samples,
        "r2": distortion_accuracy_r2(points, codecs),
        "bd_rate": bd_rates(points, codecs, metrics),
        "bd_rate_best_of": acceptance(points, codecs, metrics, config.best_of or DEFAULT_ANCHORS),
        "complexity": complexity(points, codecs),
    }


def default_anchor(codecs: list[str]) -> str | None:
    """The first codec with more than one rate point (a curve), else the first codec."""
    from splitfc.common.codecs import CODECS

    curves = [c for c in codecs if len(CODECS[c].rates) > 1]
    return (curves or codecs or [None])[0]


def _curve(points: list[dict[str, Any]], split: str, codec: str) -> list[dict[str, Any]]:
    return sorted((p for p in points if p["split"] == split and p["codec"] == codec), key=lambda p: p["rate"])


def distortion_accuracy_r2(points: list[dict[str, Any]], codecs: list[str]) -> dict[str, dict[str, float | None]]:
    """Table 5: R² of task metric vs feature MSE over each codec's rate points, per split."""
    out: dict[str, dict[str, float | None]] = {}
    for split in dict.fromkeys(p["split"] for p in points):
        out[split] = {}
        for codec in codecs:
            curve = [p for p in _curve(points, split, codec) if p["metric"] is not None]
            out[split][codec] = r_squared([p["feature_mse"] for p in curve], [p["metric"] for p in curve])
    return out


def bd_rates(points: list[dict[str, Any]], codecs: list[str], metrics: dict[str, dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """BD-rate (BPFP vs task quality) of every ordered codec pair, per split."""
    out: list[dict[str, Any]] = []
    for split, info in metrics.items():
        curves = {}
        for codec in codecs:
            pts = [p for p in _curve(points, split, codec) if p["metric"] is not None and p["bpfp"] > 0]
            q = [as_quality(p["metric"], info["higher_is_better"]) for p in pts]
            keep = [(p["bpfp"], v) for p, v in zip(pts, q, strict=True) if math.isfinite(v)]
            curves[codec] = keep
        for anchor in codecs:
            for test in codecs:
                if anchor == test:
                    continue
                a, b = curves[anchor], curves[test]
                entry: dict[str, Any] = {"split": split, "anchor": anchor, "test": test}
                if len(a) < 2 or len(b) < 2:
                    entry.update(bd_rate=None, overlap=None, notes=["fewer than 2 scored rate points"])
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = bd_rate([r for r, _ in a], [v for _, v in a], [r for r, _ in b], [v for _, v in b])
                    entry.update(res.as_dict())
                out.append(entry)
    return out


def complexity(points: list[dict[str, Any]], codecs: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean encode/decode time per sample and peak memory per codec and split (over its rate points)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for codec in codecs:
        out[codec] = {}
        for split in dict.fromkeys(p["split"] for p in points):
            curve = _curve(points, split, codec)
            if not curve:
                continue
            out[codec][split] = {
                "encode_ms": sum(p["encode_ms"] for p in curve) / len(curve),
                "decode_ms": sum(p["decode_ms"] for p in curve) / len(curve),
                "peak_rss_mb": max((p["peak_rss_mb"] or 0.0) for p in curve),
                "peak_alloc_mb": max((p["peak_alloc_mb"] or 0.0) for p in curve),
            }
    return out


# ----------------------------------------------------------------------------- text formats


def _fmt(v: Any, kind: str = "g", metric: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else "-inf"
    if kind == "bpfp":
        return f"{v:.2f}" if v >= 0.995 or v == 0 else f"{v:.3g}"
    if kind == "metric":
        return f"{v:.4f}" if metric == "RMSE" else f"{v:.2f}"
    return f"{v:.4g}"


def _rates(results: dict[str, Any], codec: str) -> list[int]:
    """A codec's rate points from the highest rate down (QP ascending, quality descending)."""
    rates = {p["rate"] for p in results["points"] if p["codec"] == codec}
    return sorted(rates, reverse=codec != ORIGINAL and _rate_name(codec) == "quality")


def _label(split: str) -> str:
    return task_of(split).label


def _codec_label(codec: str) -> str:
    return "Original" if codec == ORIGINAL else codec


def table3(results: dict[str, Any]) -> str:
    """Paper Table 3 layout: one column group (BPFP, metric, MSE) per split, Original row first."""
    splits = results["config"]["splits"]
    codecs = [ORIGINAL, *results["config"]["codecs"]]
    by = {(p["split"], p["codec"], p["rate"]): p for p in results["points"]}
    truth = {s for s in splits if any(p["split"] == s and p.get("metric_vs_truth") is not None
                                       for p in results["points"])}
    head = ["Codec", "Rate"]
    for s in splits:
        label = _label(s)
        head += [f"{label} BPFP", f"{label} {results['metrics'][s]['name']}", f"{label} MSE"]
        if s in truth:  # small CSR/Cls: the metric against the answer key / labels too
            head.append(f"{label} {results['metrics'][s]['name']} vs truth")
    columns = 3 * len(splits) + len(truth)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * columns]
    for codec in codecs:
        for rate in _rates(results, codec):
            rate_label = "-" if codec == ORIGINAL else f"{_rate_name(codec)} {rate}"
            row = [_codec_label(codec), rate_label]
            for s in splits:
                p = by.get((s, codec, rate))
                row += ["-", "-", "-"] if p is None else [
                    _fmt(p["bpfp"], "bpfp"), _fmt(p["metric"], "metric", p["metric_name"]), _fmt(p["feature_mse"])]
                if s in truth:
                    row.append("-" if p is None else _fmt(p.get("metric_vs_truth"), "metric", p["metric_name"]))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    """Table 3, the AD table, Table 5 (R²), BD-rates vs the anchor, complexity and skips."""
    cfg = results["config"]
    splits = cfg["splits"]
    codecs = cfg["codecs"]
    out = [
        f"# splitfc bench ({cfg['preset']} preset, {cfg['samples']} samples per split)", "",
        "## Rate-accuracy (paper Table 3)", "",
        "Task metric against the tail output on the uncompressed features (the Original row); "
        "MSE between original and reconstructed features.", "", table3(results), "",
        "## Accuracy drop, % (paper Fig. 5; Dpt via 1/RMSE)", "",
        "| Codec | Rate | " + " | ".join(f"{_label(s)} BPFP | {_label(s)} AD" for s in splits) + " |",
        "|---|---|" + "---:|" * (2 * len(splits)),
    ]
    by = {(p["split"], p["codec"], p["rate"]): p for p in results["points"]}
    for codec in codecs:
        for rate in _rates(results, codec):
            row = [codec, str(rate)]
            for s in splits:
                p = by.get((s, codec, rate))
                row += ["-", "-"] if p is None else [_fmt(p["bpfp"], "bpfp"), _fmt(p.get("accuracy_drop"), "metric")]
            out.append("| " + " | ".join(row) + " |")
    out += ["", "## Distortion-accuracy R² (paper Table 5)", "",
            "| Codec | " + " | ".join(map(_label, splits)) + " |", "|---|" + "---:|" * len(splits)]
    for codec in codecs:
        out.append(f"| {codec} | " + " | ".join(_fmt(results["r2"].get(s, {}).get(codec)) for s in splits) + " |")
    anchor = cfg["anchor"]
    out += ["", f"## BD-rate vs {anchor} (BPFP at equal task quality, %; negative = fewer bits)", "",
            "| Test codec | " + " | ".join(map(_label, splits)) + " |", "|---|" + "---:|" * len(splits)]
    bd = {(e["split"], e["anchor"], e["test"]): e for e in results["bd_rate"]}
    notes: list[str] = []
    for codec in codecs:
        if codec == anchor:
            continue
        cells = []
        for s in splits:
            e = bd.get((s, anchor, codec))
            cells.append("-" if e is None else _fmt(e["bd_rate"], "metric"))
            if e is not None and e["notes"]:
                notes.append(f"- {s}, {codec} vs {anchor}: " + "; ".join(e["notes"]))
        out.append(f"| {codec} | " + " | ".join(cells) + " |")
    if notes:
        out += ["", *notes]
    best = acceptance_markdown(results.get("bd_rate_best_of") or [], {s: _label(s) for s in splits})
    if best:
        used = dict.fromkeys(a for e in results["bd_rate_best_of"] for a in e["task"]["anchors"])
        asked = cfg.get("best_of") or DEFAULT_ANCHORS
        out += ["", "## BD-rate vs the best of " + "/".join(used)
                + " (their pooled rate-quality envelope; %, negative = fewer bits)", "",
                f"Anchors asked for: {', '.join(asked)}; those not run are left out. Task accuracy as above; "
                "feature MSE as -10 log10(MSE). Columns per anchor alone for reference.", "", best]
    out += ["", "## Complexity (mean per sample over the rate points; peak memory is the maximum)", "",
            "| Codec | Split | Encode ms | Decode ms | Peak RSS MB | Peak alloc MB |", "|---|---|---:|---:|---:|---:|"]
    for codec, per_split in results["complexity"].items():
        for s, c in per_split.items():
            out.append(f"| {codec} | {s} | {c['encode_ms']:.1f} | {c['decode_ms']:.1f} | "
                       f"{_fmt(c['peak_rss_mb'])} | {_fmt(c['peak_alloc_mb'])} |")
    summ = results.get("summary") or {}
    skipped = {**{f"codec {k}": v for k, v in summ.get("skipped_codecs", {}).items()},
               **{f"split {k}": v for k, v in summ.get("skipped_splits", {}).items()}}
    if skipped or summ.get("failed"):
        out += ["", "## Skipped and failed", ""]
        out += [f"- {k}: {v}" for k, v in skipped.items()]
        out += [f"- failed: {codec} on {split}, {n} point(s): {error}"
                for (split, codec, error), n in group_failures(summ.get("failed", [])).items()]
    return "\n".join(out) + "\n"


def _csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def write_all(config: BenchConfig, results: dict[str, Any]) -> list[str]:
    """Write JSON, CSV, Markdown and (optionally) plots into ``config.output``; return the paths."""
    out = Path(config.output)
    files: dict[str, bytes] = {
        "results.json": json.dumps(results, indent=1, default=str).encode(),
        "points.csv": _csv_text(results["points"], POINT_COLUMNS).encode(),
        "samples.csv": _csv_text(results["samples"], SAMPLE_COLUMNS).encode(),
        "table3.md": (table3(results) + "\n").encode(),
        "report.md": markdown_report(results).encode(),
    }
    written = []
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
        written.append(str(out / name))
    if config.plots:
        from splitfc.common.bench.plots import plot_all

        written += [str(p) for p in plot_all(results, out)]
    return written
