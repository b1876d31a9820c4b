"""Benchmark commands: ``bench`` (paper Table 3 over splits x codecs x rates) and ``bench-codecs``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import PRESET_HELP

ORDER = 40


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="rate-accuracy benchmark over splits x codecs x rate points (paper Table 3)",
        description="Run every (split, codec, rate point) over a feature set; write JSON, CSV, Markdown and "
        "plots to RESULTS_DIR. Finished points are cached in RESULTS_DIR/cache: the same command resumes.",
    )
    p.add_argument("--splits", default="all", help="comma-separated split ids, or 'all' (default)")
    p.add_argument("--codecs", default="vtm,vvenc,hevc,hyperprior",
                   help="comma-separated codec names (default: vtm,vvenc,hevc,hyperprior)")
    p.add_argument("--qps", type=_ints, default=None,
                   help="QPs of the QP codecs (vtm, vvenc, hevc); default the paper's 22,27,32,37,42")
    p.add_argument("--qualities", type=_ints, default=None,
                   help="quality indices of the learned codecs (hyperprior); default 1,2,3,4,5")
    p.add_argument("--preset", default="tiny", help=f"{PRESET_HELP} (default tiny)")
    p.add_argument("--features", type=Path, default=None,
                   help="read features from DIR (splitfc extract layout <DIR>/<split>/*.npy, or the paper's "
                   "<DIR>/<model>/<task>/feature_test/*.npy) instead of extracting them")
    p.add_argument("--samples", type=int, default=4, help="samples per split (default 4)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="where points run: local processes (--jobs) or an existing Dask cluster (--scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address for --executor dask, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--anchor", default=None, help="anchor codec for BD-rate (default: the first codec run)")
    p.add_argument("--best-of", type=_csv, default=None, metavar="CODECS",
                   help="anchors of the best-of BD-rate (their pooled rate-quality envelope; default vtm,vvenc,hevc)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG/SVG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RESULTS_DIR", help="results folder")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "bench-codecs", help="codec micro-benchmark on one synthetic paper-sized feature",
        description="BPFP, feature MSE, encode/decode time, integrity-digest time and peak memory per codec "
        "and rate on random heavy-tailed (Student-t) features of a split's paper shape. Times come from runs "
        "without the memory sampler; memory from a separate encode + decode.",
    )
    p.add_argument("--split", default="dinov2-cls",
                   help="split whose paper shape to use (default dinov2-cls); with --target-bpfp a comma-separated "
                   "list or 'all'")
    p.add_argument("--codecs", type=_csv, default=None, help="comma-separated codecs (default: all registered)")
    p.add_argument("--rates", type=_ints, default=None, help="comma-separated rates (default: each codec's)")
    p.add_argument("--repeats", type=int, default=1, help="runs per point; the fastest time is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-bpfp", type=float, default=None, metavar="BPFP",
                   help="instead of the rate points: per split and codec, search the rate knob for the BPFP closest "
                   "to this and time encode + decode there (feature points per second)")
    p.add_argument("--one-core", action="store_true", help="pin the process to one CPU while measuring")
    p.add_argument("--correlated", action="store_true",
                   help="with --target-bpfp: mix the synthetic channels by a fixed matrix (correlated channels, "
                   "as real features; a channel transform fitted on other seeds applies)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="JSON", help="output JSON file")
    p.set_defaults(func=cmd_bench_codecs)


def cmd_bench_codecs(args: argparse.Namespace) -> int:
    from splitfc.common.bench.codec_micro import format_table, one_core, run_codec_bench

    if args.repeats < 1:
        raise SplitfcError("--repeats must be at least 1")
    if args.correlated and args.target_bpfp is None:
        raise SplitfcError("--correlated needs --target-bpfp")
    if args.target_bpfp is not None:
        return _speed_bench(args)
    with one_core(args.one_core):
        result = run_codec_bench(args.split, args.codecs, args.rates, args.repeats, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"split {result['split']}, features {'x'.join(map(str, result['shape']))} ({result['features']})")
    print(format_table(result))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _speed_bench(args: argparse.Namespace) -> int:
    from splitfc.common.bench.codec_micro import format_speed_table, run_speed_bench
    from splitfc.common.codecs import CODECS
    from splitfc.common.specs import SPLITS, get_split

    if args.rates:
        raise SplitfcError("--rates and --target-bpfp exclude each other (the rate is searched)")
    splits = list(SPLITS) if args.split == "all" else [get_split(s).id for s in _csv(args.split)]
    codecs = args.codecs or [c for c in CODECS if CODECS[c].rate_name != "none"]
    result = run_speed_bench(splits, codecs, args.target_bpfp, args.repeats, args.seed, args.one_core,
                             args.correlated)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    cores = f"one core (CPU {result['cpu']})" if result["one_core"] else "all cores"
    print(f"target {args.target_bpfp:g} BPFP, {cores}, fastest of {args.repeats}; {result['features']}")
    print(format_speed_table(result))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from splitfc.common.bench.runner import BenchConfig, run_bench

    if args.samples < 1:
        raise SplitfcError("--samples must be at least 1")
    if args.jobs < 1:
        raise SplitfcError("--jobs must be at least 1")
    config = BenchConfig(
        splits=_csv(args.splits), codecs=_csv(args.codecs), preset=args.preset, features_dir=args.features,
        samples=args.samples, jobs=args.jobs, executor=args.executor,
        scheduler=args.scheduler, qps=args.qps, qualities=args.qualities, output=args.output,
        anchor=args.anchor, best_of=args.best_of, plots=not args.no_plots, progress=not args.quiet,
    )
    try:
        summary = run_bench(config)
    except KeyboardInterrupt:
        print(f"bench: interrupted; finished points are kept in {args.output / 'cache'}: "
              "run the same command to resume", file=sys.stderr)
        raise
    print(summary.text())
    return 0
