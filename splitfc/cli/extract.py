"""``splitfc extract``: run a split's edge part over samples and write the features.

One ``<sample id>.npy`` per sample (the paper's data set layout) plus ``manifest.json``
(model, preset, split, dtype, expected shape, and per file its shape and source id).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import PRESET_HELP

ORDER = 5
MANIFEST = "manifest.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="run a split's edge part (head) over samples and write .npy features")
    from splitfc.common.specs import SPLITS

    p.add_argument("--split", required=True, help=f"split id: {', '.join(SPLITS)}")
    p.add_argument("--preset", default="tiny", help=f"{PRESET_HELP} (default tiny)")
    p.add_argument("--samples", type=int, required=True, metavar="N", help="number of samples")
    p.add_argument("--data", type=Path, help="local data set (ImageNet val folder, VOC2012, NYU, ARC file, "
                   "COCO captions json); default: the built-in offline samples")
    p.add_argument("--train", action="store_true", help="write the training set (disjoint from the default one)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.set_defaults(func=cmd_extract)


def safe_name(sample_id: str) -> str:
    """A file-name-safe form of a sample id."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._")
    return name or "sample"


def cmd_extract(args: argparse.Namespace) -> int:
    from splitfc.common.data import load_samples
    from splitfc.common.models import check_preset, get_split_model, preset_samples
    from splitfc.common.specs import format_shape, get_split

    spec = get_split(args.split)
    check_preset(args.preset)
    if args.samples < 1:
        raise SplitfcError(f"--samples must be at least 1, got {args.samples}")
    if args.data is not None:
        samples = load_samples(spec.id, args.data, args.samples, train=args.train)
        source = str(args.data)
    else:
        samples = preset_samples(spec.id, args.samples, args.preset, train=args.train)
        source = "built-in samples" if args.preset != "small" else f"{args.preset} preset samples"
    if not samples:
        raise SplitfcError(f"no samples found in {source}")
    model = get_split_model(spec.id, args.preset)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    files = []
    used: set[str] = set()
    start = time.perf_counter()
    for sample in samples:
        features = model.head(sample.inputs)
        name = safe_name(sample.id)
        while name in used:
            name += "_"
        used.add(name)
        np.save(out / f"{name}.npy", features, allow_pickle=False)
        files.append({"file": f"{name}.npy", "id": sample.id, "shape": list(features.shape)})
    elapsed = time.perf_counter() - start
    manifest = {
        "model": model.model_name,
        "preset": args.preset,
        "split": spec.id,
        "split_point": spec.split_point,
        "layout": list(spec.layout),
        "expected_shape": [s for s in model.expected_shape()],
        "dtype": str(np.load(out / files[0]["file"], mmap_mode="r").dtype),
        "train": bool(args.train),
        "source": source,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{out}: {len(files)} feature files of {spec.id} ({args.preset}), "
          f"shape {format_shape(tuple(files[0]['shape']))}, {elapsed:.2f} s", file=sys.stderr)
    return 0
