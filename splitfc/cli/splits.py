"""``splitfc splits``: the split points (paper Tables 1, 2 and 4) as this build knows them."""

from __future__ import annotations

import argparse
import json

ORDER = 25


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("splits", help="list split points: model family, task, shapes, head, truncation ranges")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=cmd_splits)


def cmd_splits(args: argparse.Namespace) -> int:
    from splitfc.common.specs import SPLITS, format_shape
    from splitfc.common.tasks import get_task

    rows = [
        {
            "split": spec.id,
            "family": spec.family,
            "task": spec.task,
            "split_point": spec.split_point,
            "layout": list(spec.layout),
            "paper_shape": format_shape(spec.paper_shape),
            "packing": spec.packing.value,
            "head": spec.head,
            "metric": get_task(spec.task).metric,
            "original_range": [list(r) for r in spec.original_range],
            "truncation": {col.value: [list(r) for r in ranges] for col, ranges in spec.truncation.items()},
            "preset_truncation": {
                preset: {col.value: [list(r) for r in ranges] for col, ranges in columns.items()}
                for preset, columns in spec.preset_truncation.items()
            },
            "preset_original_range": {
                preset: [list(r) for r in ranges] for preset, ranges in spec.preset_original_range.items()
            },
        }
        for spec in SPLITS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['split']:<12} {r['family']} {r['task']}: {r['split_point']}; {' x '.join(r['layout'])} "
              f"(paper {r['paper_shape']}), packing {r['packing']}")
        print(f"{'':<12} head: {r['head']}; metric {r['metric']}")
        print(f"{'':<12} original range {r['original_range']}; truncation {r['truncation']}")
        for preset, columns in r["preset_truncation"].items():
            measured = r["preset_original_range"].get(preset)
            extra = f"; measured range {measured}" if measured else ""
            print(f"{'':<12} {preset} preset: truncation {columns}{extra}")
    return 0
