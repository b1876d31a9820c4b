"""``splitfc feature-ranges``: measure a split's feature ranges and the truncation ranges the stated rule picks.

The rule is `splitfc.common.feature_ranges` (percentile of |x| rounded up to 1-2-5; the measured range
where nothing would be truncated). Features come from ``--features DIR`` (``splitfc extract --train``)
or from the model's head on the built-in training samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import PRESET_HELP

ORDER = 26


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "feature-ranges",
        help="measure a split's feature ranges on training samples and choose truncation ranges (Table 4 rule)",
    )
    p.add_argument("--split", required=True, help="split id")
    p.add_argument("--preset", default="tiny", help=f"{PRESET_HELP} (default tiny)")
    p.add_argument("--samples", type=int, default=16, metavar="N",
                   help="training samples run through the head (default 16; ignored with --features)")
    p.add_argument("--features", type=Path, metavar="DIR", help="folder of .npy features (splitfc extract --train)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the measurement as JSON")
    p.set_defaults(func=cmd_feature_ranges)


def cmd_feature_ranges(args: argparse.Namespace) -> int:
    import numpy as np

    from splitfc.common.feature_ranges import HYPERPRIOR_PERCENTILE, VTM_PERCENTILE, measure_ranges
    from splitfc.common.models import check_preset, get_split_model, preset_samples
    from splitfc.common.specs import TruncationColumn, get_split

    check_preset(args.preset)
    spec = get_split(args.split)
    if args.features is not None:
        from splitfc.common.learned.data import feature_files

        files = feature_files(args.features)
        features = [np.load(f, allow_pickle=False) for f in files]
        source = f"{len(files)} feature files in {args.features}"
    else:
        if args.samples < 1:
            raise SplitfcError(f"--samples must be at least 1, got {args.samples}")
        model = get_split_model(spec.id, args.preset)
        samples = preset_samples(spec.id, args.samples, args.preset, train=True)
        features = [model.head(s.inputs) for s in samples]
        source = f"{len(samples)} {args.preset} training samples through {model.model_name}"
    groups = measure_ranges(features, spec)
    current = get_split(spec.id, args.preset)
    rows = {
        "split": spec.id, "preset": args.preset, "source": source,
        "rule": f"[-a, a], a = p{VTM_PERCENTILE:g} (VTM) / p{HYPERPRIOR_PERCENTILE:g} (Hyperprior) of |x| "
                "rounded up to 1-2-5, cut to the measured [min, max] where that lies inside",
        "groups": [g.as_dict() for g in groups],
        "paper_table4": {
            "original": [list(r) for r in spec.original_range],
            "vtm": [list(r) for r in spec.ranges(TruncationColumn.VTM)],
            "hyperprior": [list(r) for r in spec.ranges(TruncationColumn.HYPERPRIOR)],
        },
        "in_use": {
            "vtm": [list(r) for r in current.ranges(TruncationColumn.VTM)],
            "hyperprior": [list(r) for r in current.ranges(TruncationColumn.HYPERPRIOR)],
        },
    }
    print(f"{spec.id} ({args.preset}): {source}")
    print(f"rule: {rows['rule']}")
    print(f"{'group':<6} {'min':>9} {'max':>9} {'|x| p99':>9} {'|x| p99.9':>9}  {'VTM':<18} {'Hyperprior':<18}")
    for i, g in enumerate(groups):
        print(f"{i + 1:<6} {g.low:>9.3f} {g.high:>9.3f} {g.abs_p99:>9.3f} {g.abs_p999:>9.3f}  "
              f"{_fmt(g.vtm):<18} {_fmt(g.hyperprior):<18}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _fmt(r: tuple[float, float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"
