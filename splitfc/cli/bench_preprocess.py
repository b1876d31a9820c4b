"""``splitfc bench-preprocess``: time and peak memory of the paper's pre-processing on a paper-size feature.

Times (best of ``--repeat``) and memory are measured in separate passes; memory is the
`tracemalloc` peak above the start of the call (numpy arrays are traced), which
includes the output arrays themselves.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

ORDER = 55


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-preprocess",
        help="time and peak memory of truncation + quantization + packing (and back) on a paper-size feature",
    )
    p.add_argument("--split", default="dinov2-dpt", help="split whose paper shape to use (default dinov2-dpt)")
    p.add_argument("--tokens", type=int, default=77, help="token count for variable-length splits (llama3-csr)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions (the best is reported)")
    p.add_argument("--json", type=Path, help="write the result here as JSON")
    p.set_defaults(func=cmd_bench_preprocess)


def _peak_mib(fn: Any, *args: Any) -> float:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - base) / 2**20


def _best_s(fn: Any, arg: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t)
    return best


def cmd_bench_preprocess(args: argparse.Namespace) -> int:
    import numpy as np

    from splitfc.common.preprocess import FramePlan
    from splitfc.common.specs import TruncationColumn, get_split

    spec = get_split(args.split)
    shape = tuple(args.tokens if s is None else int(s) for s in spec.paper_shape)
    rng = np.random.default_rng(0)
    x = (rng.standard_t(3, shape) * 10).astype(np.float32)
    plan = FramePlan(spec, shape, spec.ranges(TruncationColumn.VTM))
    frame = plan.to_frame(x)
    result = {
        "split": spec.id, "shape": list(shape), "feature_mib": round(x.nbytes / 2**20, 1),
        "frame_shape": list(frame.shape),
        "to_frame_ms": round(_best_s(plan.to_frame, x, args.repeat) * 1e3, 2),
        "from_frame_ms": round(_best_s(plan.from_frame, frame, args.repeat) * 1e3, 2),
        "to_frame_peak_mib": round(_peak_mib(plan.to_frame, x), 1),
        "from_frame_peak_mib": round(_peak_mib(plan.from_frame, frame), 1),
    }
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0
