"""``splitfc train-probe`` (the ``small`` preset's Cls head) and ``splitfc feature-stats`` (feature ranges at
each split point, per layer for Dpt, and per-sample head/tail times; issue 14).

The shipped head ``common/models/dinov2_small_textile_probe.safetensors`` was written by::

    splitfc train-probe --split dinov2-cls --preset small -o common/models/dinov2_small_textile_probe.safetensors
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError

ORDER = 45
PROBE_SPLITS = {("dinov2-cls", "small")}
"""(split, preset) pairs whose Cls head ``train-probe`` trains."""
QUANTILES = (0.001, 0.01, 0.99, 0.999)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-probe", help="train the small preset's Cls head (linear probe) on labeled images")
    p.add_argument("--split", required=True, help="split id (dinov2-cls)")
    p.add_argument("--preset", required=True, help="model preset (small)")
    p.add_argument("--train-samples", type=int, metavar="N",
                   help="train on the first N training images (default: all 372 of the training fifth)")
    p.add_argument("--eval-samples", type=int, default=300, metavar="N",
                   help="score top-1 on the first N held-back images (default 300; 0 = none)")
    p.add_argument("--weight-decay", type=float,
                   help="L2 penalty on standardised inputs (default: chosen among 1e-3, 1e-2, 0.1, 1 by 5-fold "
                        "cross-validation on the training images)")
    p.add_argument("-o", "--output", type=Path, required=True, help="head file to write (.safetensors)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=cmd_train_probe)

    p = sub.add_parser("feature-stats", help="feature ranges at a split point (per layer for Dpt) on training "
                       "samples, and per-sample head/tail times")
    p.add_argument("--split", required=True, help="split id, e.g. dinov2-dpt")
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--samples", type=int, default=8, metavar="N", help="training samples (default 8)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=cmd_feature_stats)


def _positive(value: int | None, flag: str, zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise SplitfcError(f"{flag} must be {'>= 0' if zero_ok else 'at least 1'}, got {value}")


def _emit(report: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _progress(label: str, total: int) -> Any:
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        print(f"\r{label}: {done[0]}/{total}", end="" if done[0] < total else "\n", file=sys.stderr, flush=True)

    return step


def cmd_train_probe(args: argparse.Namespace) -> int:
    from splitfc.common.data import TEXTILE_CLASSES, is_train_id, textile_images
    from splitfc.common.models import check_preset
    from splitfc.common.models import dinov2 as family
    from splitfc.common.models import dinov2_probe as probe
    from splitfc.common.specs import get_split

    spec = get_split(args.split)
    check_preset(args.preset)
    if (spec.id, args.preset) not in PROBE_SPLITS:
        known = ", ".join(f"{s} --preset {p}" for s, p in sorted(PROBE_SPLITS))
        raise SplitfcError(f"train-probe trains the Cls head of {known}; got {spec.id} --preset {args.preset}")
    _positive(args.train_samples, "--train-samples")
    _positive(args.eval_samples, "--eval-samples", zero_ok=True)
    decay = args.weight_decay
    if decay is not None and not decay >= 0:
        raise SplitfcError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.output.suffix != ".safetensors":
        raise SplitfcError(f"--output must end in .safetensors, got {args.output}")

    train = textile_images(args.train_samples, keep=is_train_id)
    held = textile_images(args.eval_samples, keep=lambda i: not is_train_id(i)) if args.eval_samples else []
    if len({s.target for s in train}) < 2:
        raise SplitfcError(f"{len(train)} training images hold fewer than 2 classes; use more --train-samples")
    backbone = family.small_backbone()
    model = family.small_cls_split(backbone, len(TEXTILE_CLASSES))
    result = probe.train_probe(model, train, TEXTILE_CLASSES, decay, progress=_progress("train", len(train)))
    report: dict[str, Any] = {
        "split": spec.id,
        "preset": args.preset,
        "backbone": family.small_backbone_name(backbone),
        "dataset": probe.DATASET,
        "classes": list(TEXTILE_CLASSES),
        "split_rule": "train: crc32(id) % 5 == 0 (splitfc.common.data.is_train_id); held back: the others",
        "train_samples": result.train_samples,
        "train_class_counts": [int(sum(s.target == c for s in train)) for c in range(len(TEXTILE_CLASSES))],
        "weight_decay": float(result.metadata["weight_decay"]),
        "weight_decay_from": "--weight-decay" if decay is not None else "5-fold CV on the training images",
        **({"cv_top1": json.loads(result.metadata["cv_top1"])} if "cv_top1" in result.metadata else {}),
        "train_top1": result.train_accuracy,
        "extract_seconds_per_image": result.extract_seconds / max(1, result.train_samples),
        "fit_seconds": result.fit_seconds,
    }
    if held:
        inputs = probe.probe_inputs_batch(model, [s.inputs for s in held], progress=_progress("held back", len(held)))
        labels = np.asarray([s.target for s in held])
        predicted = np.argmax(inputs @ result.weight.T + result.bias, axis=1)
        report["heldback_samples"] = len(held)
        report["heldback_top1"] = 100.0 * float(np.mean(predicted == labels))
        report["heldback_majority_top1"] = 100.0 * float(np.max(np.bincount(labels, minlength=3)) / len(labels))
        report["heldback_per_class_top1"] = {
            name: (100.0 * float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None)
            for c, name in enumerate(TEXTILE_CLASSES)
        }
    command = shlex.join(["splitfc", "train-probe", "--split", spec.id, "--preset", args.preset,
                          *(["--train-samples", str(args.train_samples)] if args.train_samples else []),
                          "--eval-samples", str(args.eval_samples),
                          *(["--weight-decay", f"{decay:g}"] if decay is not None else []), "-o", str(args.output)])
    report["command"] = command
    metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in report.items()}
    probe.save_probe(result, args.output, metadata)
    report["output"] = str(args.output)
    _emit(report, args.json)
    return 0


def _training_samples(split_id: str, preset: str, n: int) -> tuple[list[Any], str]:
    """The samples ranges are measured on: small Cls -> labeled textile training images, else built-in ones."""
    from splitfc.common.models import tiny_samples

    if (split_id, preset) in PROBE_SPLITS:
        from splitfc.common.data import is_train_id, textile_images

        return textile_images(n, keep=is_train_id), "textile training images (crc32(id) % 5 == 0)"
    return tiny_samples(split_id, n, train=True), "built-in training images (train=True)"


def _range_row(values: np.ndarray) -> dict[str, float]:
    flat = values.astype(np.float64).ravel()
    q = np.quantile(flat, QUANTILES)
    row = {"min": float(flat.min()), "max": float(flat.max())}
    row.update({f"q{100 * p:g}": float(v) for p, v in zip(QUANTILES, q, strict=True)})
    row["std"] = float(flat.std())
    return row


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _load_average() -> float | None:
    import os

    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


def cmd_feature_stats(args: argparse.Namespace) -> int:
    from splitfc.common.models import build_split_model, check_preset
    from splitfc.common.specs import get_split

    spec = get_split(args.split)
    check_preset(args.preset)
    _positive(args.samples, "--samples")
    samples, source = _training_samples(spec.id, args.preset, args.samples)
    if not samples:
        raise SplitfcError(f"no training samples for {spec.id}")
    model = build_split_model(spec.id, args.preset)
    model.tail(model.head(samples[0].inputs))  # warm-up, not timed
    feats, head_s, tail_s, head_cpu, tail_cpu = [], [], [], [], []
    for sample in samples:
        c0, t0 = time.process_time(), time.perf_counter()
        f = model.head(sample.inputs)
        c1, t1 = time.process_time(), time.perf_counter()
        model.tail(f)
        c2, t2 = time.process_time(), time.perf_counter()
        feats.append(f)
        head_s.append(t1 - t0)
        tail_s.append(t2 - t1)
        head_cpu.append(c1 - c0)
        tail_cpu.append(c2 - c1)
    stacked = np.stack(feats)
    group = spec.group_axis
    if group is None:
        ranges = [_range_row(stacked)]
    else:
        ranges = [_range_row(np.take(stacked, k, axis=group + 1)) for k in range(stacked.shape[group + 1])]
    report = {
        "split": spec.id,
        "preset": args.preset,
        "model": model.model_name,
        "samples": len(samples),
        "sample_source": source,
        "shape": list(feats[0].shape),
        "ranges": ranges,
        "ranges_per": "layer" if group is not None else "split point",
        "paper_original_range": [list(r) for r in spec.original_range],
        "head_ms_median": 1e3 * statistics.median(head_s),
        "tail_ms_median": 1e3 * statistics.median(tail_s),
        "head_ms_mean": 1e3 * statistics.fmean(head_s),
        "tail_ms_mean": 1e3 * statistics.fmean(tail_s),
        "head_cpu_ms_median": 1e3 * statistics.median(head_cpu),
        "tail_cpu_ms_median": 1e3 * statistics.median(tail_cpu),
        "cpu_note": "CPU time of the process over all its threads (wall time grows with the machine's load)",
        "torch_threads": _torch_threads(),
        "load_average_1min": _load_average(),
        "command": shlex.join(["splitfc", "feature-stats", "--split", spec.id, "--preset", args.preset,
                               "--samples", str(args.samples)]),
    }
    _emit(report, args.json)
    return 0
