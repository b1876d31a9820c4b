"""Per-rate-point aggregation of per-sample records.

BPFP of a point is the mean of the samples' BPFP (each sample's payload bits
over its feature points, paper Section 5.1); ``bpfp_pooled`` is all payload bits
over all feature points, which differs only when samples differ in size (CSR).
Feature MSE and times are means over samples; peak memory is the maximum.
The task metric is scored on all samples together (`task.score`), not averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MEAN_FIELDS = ("bpfp", "bpfp_with_header", "feature_mse", "encode_ms", "decode_ms", "tail_ms")
MAX_FIELDS = ("peak_rss_mb", "peak_alloc_mb")


def aggregate_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate the per-sample records of one (split, codec, rate) point."""
    if not records:
        raise ValueError("no records to aggregate")
    out: dict[str, Any] = {"samples": len(records)}
    for name in MEAN_FIELDS:
        values = [r[name] for r in records if r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
    for name in MAX_FIELDS:
        values = [r[name] for r in records if r.get(name) is not None]
        out[name] = float(max(values)) if values else None
    bits = sum(int(r["payload_bits"]) for r in records)
    points = sum(int(r["feature_points"]) for r in records)
    out["bpfp_pooled"] = bits / points
    out["payload_bytes_total"] = bits // 8
    out["encode_ms_total"] = float(sum(r.get("encode_ms") or 0.0 for r in records))
    out["decode_ms_total"] = float(sum(r.get("decode_ms") or 0.0 for r in records))
    return out


def group_failures(lines: Sequence[str]) -> dict[tuple[str, str, str], int]:
    """Failed points (``split codec@rate sample: error`` lines) counted per (split, codec),
    keyed with the first error seen."""
    first: dict[tuple[str, str], str] = {}
    counts: dict[tuple[str, str], int] = {}
    for line in lines:
        head, _, error = line.partition(": ")
        split, codec_rate = ([*head.split(" "), "", ""])[:2]
        key = (split, codec_rate.split("@")[0])
        first.setdefault(key, error)
        counts[key] = counts.get(key, 0) + 1
    return {(split, codec, first[(split, codec)]): n for (split, codec), n in counts.items()}
