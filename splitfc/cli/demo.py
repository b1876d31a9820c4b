"""``splitfc demo``: a cloud on a free loopback port, the edge for every split, one table."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from splitfc.common.models.base import PRESETS

ORDER = 5
DEFAULT_SAMPLES = 4
GROUND_TRUTH_SAMPLES = 16
"""Samples of the small preset's CSR (ARC answer key) and Cls (labels) splits by default: accuracy on 4 is
too coarse to read; these two splits are also the cheapest to run."""
DEFAULT_CODEC = "vvenc"
DEFAULT_QP = 32


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo: start a cloud on loopback, run the edge for all five splits, print a table",
        description="The small preset (pretrained SmolLM2-135M and DINOv2 ViT-S/14, real ARC-Challenge and "
        "labeled images, offline) when splitfc[small] is installed, else the tiny preset (random weights), "
        "saying so. Default codec: vvenc at QP 32 when available, else raw.",
    )
    p.add_argument("--preset", choices=("auto", *PRESETS), default="auto",
                   help="auto (default): small when its packages are installed, else tiny; or a preset")
    p.add_argument("--samples", type=int, help=f"samples per split (default {DEFAULT_SAMPLES}; small preset: "
                   f"{GROUND_TRUTH_SAMPLES} for the splits scored against ground truth, CSR and Cls)")
    p.add_argument("--codec", help="codec for every split (default vvenc QP 32 if available, else raw)")
    p.add_argument("--qp", type=int, help="rate of --codec")
    p.add_argument("--splits", default="all", help="all, or comma-separated split ids")
    p.add_argument("--concurrency", type=int, default=2, help="edge requests in flight (default 2)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every split's full report as JSON")
    p.add_argument("--log", action="store_true", help="print both sides' JSON request lines to stderr")
    p.set_defaults(func=cmd_demo)


def choose_preset(requested: str, splits: list[str]) -> tuple[str, str | None]:
    """The demo's preset and, when ``auto`` falls back to ``tiny``, the one line saying why.

    ``auto``: ``small`` when every package it needs is installed and every split's model family
    builds it (or has a stated stand-in), else ``tiny``. An explicit ``small`` with packages missing
    raises `MissingExtraError` naming them and how to install them.
    """
    from splitfc.common.models import STAND_INS, family_presets, missing_small_packages
    from splitfc.common.models.pretrained import EXTRA_HINT, MissingExtraError
    from splitfc.common.specs import get_split

    if requested not in ("auto", "small"):
        return requested, None
    missing = missing_small_packages()
    if missing and requested == "small":
        raise MissingExtraError(f"the small preset needs {', '.join(missing)}: {EXTRA_HINT}")
    if requested == "small":
        return "small", None
    families = sorted({get_split(s).family for s in splits})
    lacking = [f for f in families if "small" not in family_presets(f) and (f, "small") not in STAND_INS]
    if missing:
        why = f"{', '.join(missing)} not installed; {EXTRA_HINT}"
    elif lacking:
        why = f"the {', '.join(lacking)} model family does not build it yet"
    else:
        return "small", None
    return "tiny", (
        f"splitfc demo: small preset unavailable ({why}): running the tiny preset (random weights, "
        "metrics are agreement only)"
    )


def samples_for(split: str, requested: int | None, preset: str) -> int:
    """Samples of ``split``: ``requested``, else `GROUND_TRUTH_SAMPLES` for small CSR/Cls, else `DEFAULT_SAMPLES`."""
    if requested is not None:
        return requested
    return GROUND_TRUTH_SAMPLES if preset == "small" and split in ("llama3-csr", "dinov2-cls") else DEFAULT_SAMPLES


def samples_note(requested: int | None, preset: str) -> str:
    if requested is not None or preset != "small":
        return f"{samples_for('', requested, preset)} samples per split"
    return f"{GROUND_TRUTH_SAMPLES} samples for llama3-csr and dinov2-cls, {DEFAULT_SAMPLES} for the others"


def default_codec() -> tuple[str, int]:
    """vvenc at QP 32 where it runs here, else raw."""
    from splitfc.common.codecs import CODECS

    cls = CODECS.get(DEFAULT_CODEC)
    if cls is not None and cls.unavailable_reason() is None:
        return DEFAULT_CODEC, DEFAULT_QP
    return "raw", 0


def demo_table(rows: list[dict[str, Any]]) -> str:
    """The demo's table: split, codec, BPFP, task metric, agreement with the unsplit model, latency."""
    header = (
        f"{'split':<11} {'codec':<9} {'BPFP':>8} {'metric':<15} {'value':>8} {'vs':<7} {'unsplit':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'ok':>3} {'err':>3}"
    )
    lines = [header, "-" * len(header)]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        s, c = r["summary"], r["config"]
        m = s["metric"] or {}
        a = s["agreement"] or {}
        lat = s["latency_ms"]["total"]
        vs = {"ground truth": "truth", "uncompressed pipeline": "unsplit"}.get(m.get("reference", ""), "-")
        codec = c["codec"] if c["codec"] == "raw" else f"{c['codec']}@{c['qp']}"
        lines.append(
            f"{c['split']:<11} {codec:<9} {num(s['bpfp_mean'], '.4f'):>8} {m.get('metric', '-')[:15]:<15} "
            f"{num(m.get('value'), '.2f'):>8} {vs:<7} {num(a.get('value'), '.2f'):>8} "
            f"{num(lat['p50'], '.1f'):>7} {num(lat['p95'], '.1f'):>7} {s['ok']:>3} {s['errors']:>3}"
        )
    return "\n".join(lines)


def models_note(preset: str, splits: list[str]) -> str:
    """Which model ran each split and what its metric is measured against (README "small preset")."""
    from splitfc.common.models import get_split_model

    lines = [f"preset {preset}: 'truth' = against ground truth (answer key, labels); 'unsplit' = agreement "
             "with the unsplit model on uncompressed features"]
    for split in splits:
        lines.append(f"  {split}: {get_split_model(split, preset).model_name}")
    return "\n".join(lines)


def failure_note(split: str, report: dict[str, Any]) -> str | None:
    """One line per distinct reason the split's failed samples gave (status and error), with how many
    gave it; None when every sample succeeded."""
    reasons: dict[str, int] = {}
    for r in report.get("requests", []):
        if r.get("status") != "OK":
            reason = f"{r.get('status')}: {r.get('error') or 'no detail'}"
            reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return None
    total = len(report.get("requests", []))
    return "\n".join(f"splitfc demo: {split}: {n} of {total} samples failed: {reason}"
                     for reason, n in reasons.items())


def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()  # before the heavy imports (torch, transformers, grpc): they count too
    from splitfc.cloud.server import ServerThread
    from splitfc.cloud.settings import CloudSettings
    from splitfc.common.codecs import get_codec
    from splitfc.common.errors import SplitfcError
    from splitfc.common.jsonlog import json_logger, silent_logger
    from splitfc.edge.runner import EdgeRunConfig, run_edge
    from splitfc.edge.settings import EdgeSettings

    if (args.samples is not None and args.samples < 1) or args.concurrency < 1:
        raise SplitfcError("--samples and --concurrency must be >= 1")
    codec, qp = (args.codec, args.qp) if args.codec else default_codec()
    if qp is None:
        qp = get_codec(codec).rates[len(get_codec(codec).rates) // 2] if get_codec(codec).rates else 0
    get_codec(codec).require_available()
    splits = CloudSettings(grpc_port=0, http_port=0, splits=args.splits).split_ids()
    preset, fallback = choose_preset(args.preset, splits)
    if fallback:
        print(fallback, file=sys.stderr, flush=True)
    settings = CloudSettings(grpc_port=0, http_port=0, preset=preset, splits=args.splits, log_requests=args.log)
    edge_log = json_logger("splitfc.edge.requests") if args.log else silent_logger("splitfc.edge.requests")
    cloud = ServerThread(settings)
    print(f"splitfc demo: starting the cloud ({preset} preset, {len(splits)} splits) ...", file=sys.stderr,
          flush=True)
    ep = cloud.start(wait_ready=False)
    rows: list[dict[str, Any]] = []
    try:
        cloud.wait_ready()
        print(
            f"splitfc demo: cloud ready on {ep.grpc_target} (HTTP {ep.http_url}) "
            f"after {time.perf_counter() - t0:.1f} s; "
            f"edge: {samples_note(args.samples, preset)}, codec {codec}" + ("" if codec == "raw" else f" QP {qp}"),
            file=sys.stderr, flush=True,
        )
        # The cloud is on 127.0.0.1: the edge's loopback channels never use an http_proxy (edge.security).
        edge_settings = EdgeSettings()
        for split in splits:
            config = EdgeRunConfig(
                server=ep.grpc_target, split=split, codec=codec, qp=qp,
                samples=samples_for(split, args.samples, preset),
                preset=preset, concurrency=args.concurrency,
            )
            report = asyncio.run(run_edge(config, edge_settings, logger=edge_log))
            rows.append(report)
            print(f"splitfc demo: {split} done", file=sys.stderr, flush=True)
            note = failure_note(split, report)
            if note:
                print(note, file=sys.stderr, flush=True)
    finally:
        cloud.stop()
    print(demo_table(rows))
    print(models_note(preset, splits))
    print(f"total {time.perf_counter() - t0:.1f} s (imports, cloud start-up and model loading included)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["summary"]["errors"] == 0 for r in rows) else 1
