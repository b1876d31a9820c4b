"""Rate-distortion-accuracy evaluation of hyperprior checkpoints on feature files.

``evaluate_checkpoints`` codes every feature file of a split with the
checkpoints of ``trained_on`` (the same split for the README tables, another
one for the generalizability run of paper Table 6) through the real rANS
coder and reports, per quality: BPFP (payload bits / feature points), MSE
between the original features Fo and the reconstruction (paper Table 3), the
task metric when the split's model can score the features, and the mean
encode/decode time per feature.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.learned.data import feature_files, load_features
from splitfc.common.specs import get_split


def code_file(codec: Any, x: np.ndarray, split: str, quality: int) -> tuple[np.ndarray, int, float, float]:
    """Encode and decode one tensor: (reconstruction, payload bits, encode s, decode s)."""
    spec = get_split(split)
    t0 = time.perf_counter()
    enc = codec.encode(x, spec, quality)
    t1 = time.perf_counter()
    rec = codec.decode(enc, spec, tuple(x.shape), np.dtype(np.float32), quality)
    t2 = time.perf_counter()
    return rec, len(enc.payload) * 8, t1 - t0, t2 - t1


def task_scores(split: str, preset: str, originals: list[np.ndarray], decoded: list[np.ndarray]) -> tuple[str, float]:
    """(metric name, value) of the split's task on decoded features.

    The reference is the same pipeline on the original features (`score_outputs`), so
    the uncoded features score 100 % accuracy / mIoU, 0 RMSE, or the PSNR cap for TTI.
    """
    from splitfc.common.metrics import score_outputs
    from splitfc.common.models import get_split_model

    model = get_split_model(split, preset)
    refs = [model.tail(x) for x in originals]
    outs = [model.tail(y) for y in decoded]
    scored = score_outputs(split, outs, refs)
    return str(scored["metric"]), float(scored["value"])


def evaluate_checkpoints(
    split: str, trained_on: str, features: Path, qualities: list[int], directory: Path | None = None,
    limit: int | None = None, task: bool = True, preset: str = "tiny",
) -> list[dict[str, Any]]:
    """One row per quality: BPFP, MSE (vs the original features), task metric, ms per feature."""
    from splitfc.common.codecs.hyperprior import HyperpriorCodec

    spec = get_split(split)
    files = feature_files(features)[:limit] if limit else feature_files(features)
    originals = [load_features(f) for f in files]
    codec = HyperpriorCodec(directory=directory, source_split=trained_on)
    rows = []
    for q in qualities:
        _, cfg = codec.model_for(get_split(trained_on).id, q)
        bits = points = 0
        mses, enc_s, dec_s, decoded = [], [], [], []
        for x in originals:
            rec, b, te, td = code_file(codec, x, spec.id, q)
            bits += b
            points += x.size
            mses.append(float(np.mean((rec.astype(np.float64) - x.astype(np.float64)) ** 2)))
            enc_s.append(te)
            dec_s.append(td)
            decoded.append(rec)
        row: dict[str, Any] = {
            "split": spec.id, "trained_on": cfg.split, "quality": q, "lambda": cfg.lmbda,
            "checkpoint": cfg.checkpoint_id[:12], "files": len(files),
            "bpfp": bits / points, "mse": float(np.mean(mses)),
            "encode_ms": 1000 * float(np.mean(enc_s)), "decode_ms": 1000 * float(np.mean(dec_s)),
        }
        if task:
            row["metric"], row["metric_value"] = task_scores(spec.id, preset, originals, decoded)
        rows.append(row)
    if task:
        # the pre-processing alone (truncation + 10-bit quantization, no codec): the floor of the distortion
        pre = [codec.plan(spec, x.shape) for x in originals]
        floor = [p.from_frame(p.to_frame(x)) for p, x in zip(pre, originals, strict=True)]
        metric, value = task_scores(spec.id, preset, originals, floor)
        rows.append({
            "split": spec.id, "trained_on": "pre-processing only", "quality": None, "lambda": None,
            "files": len(files), "bpfp": 10.0, "mse": float(np.mean([np.mean((f - x) ** 2) for f, x in
                                                                   zip(floor, originals, strict=True)])),
            "metric": metric, "metric_value": value,
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `evaluate_checkpoints` rows."""
    lines = ["| features | trained on | quality | λ | BPFP | MSE | task metric | encode ms | decode ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = f"{r['metric']} {r['metric_value']:.4f}" if "metric" in r else "n/a"
        enc = f"{r['encode_ms']:.1f}" if "encode_ms" in r else "-"
        dec = f"{r['decode_ms']:.1f}" if "decode_ms" in r else "-"
        lam = f"{r['lambda']:g}" if r.get("lambda") is not None else "-"
        lines.append(f"| {r['split']} | {r['trained_on']} | {r['quality'] or '-'} | {lam} | {r['bpfp']:.4f} | "
                     f"{r['mse']:.6g} | {metric} | {enc} | {dec} |")
    return "\n".join(lines)
