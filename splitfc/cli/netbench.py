"""``splitfc netbench``: the command line of `splitfc.netbench` (real transmission cost over a shaped link)."""

from __future__ import annotations

import argparse
from pathlib import Path

from splitfc.common.models.base import PRESET_HELP

ORDER = 80


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "netbench",
        help="real transmission cost: edge and cloud in two network namespaces over a tc-shaped veth link (root)",
        description="Bytes on the wire (veth counters), wire overhead over the bitstream, transfer time, end-to-end "
                    "latency and the speed-up over raw float32/float16 features per codec point and link rate, "
                    "with the real edge (splitfc edge run's code). Needs root; skips otherwise.",
    )
    p.add_argument("--rate-mbit", type=float, action="append",
                   help="link rate in Mbit/s, shaped with tbf in both directions (repeatable; default 10)")
    p.add_argument("--point", action="append",
                   help="codec point: raw-f32, raw-f16 or CODEC:RATE such as vvenc:32 (repeatable; default: raw "
                        "float32/float16 and the available vvenc/hevc/hyperprior/native at two rate points)")
    p.add_argument("--split", default="dinov2-dpt",
                   help="split id (default dinov2-dpt, the largest tiny-preset features: 2x4x81x128)")
    p.add_argument("--preset", default="tiny", help=f"{PRESET_HELP}; both sides (default tiny)")
    p.add_argument("--samples", type=int, default=8, help="requests per point and rate (default 8)")
    p.add_argument("--unshaped", action="store_true", help="also run every point on the unshaped link")
    p.add_argument("--delay-ms", type=float, help="added round-trip delay (needs the kernel's netem qdisc)")
    p.add_argument("--loss-pct", type=float, help="random loss in percent (needs the kernel's netem qdisc)")
    p.add_argument("--tcp-probe", type=int, metavar="BYTES",
                   help="send BYTES over plain TCP instead of running splitfc (checks the link and the counting)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the cloud to load")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.set_defaults(func=cmd_netbench)


def cmd_netbench(args: argparse.Namespace) -> int:
    from splitfc.common.models import check_preset
    from splitfc.netbench import NetbenchOptions, run_netbench

    check_preset(args.preset)
    return run_netbench(NetbenchOptions(
        rates_mbit=args.rate_mbit or [10.0], points=args.point, split=args.split, preset=args.preset,
        samples=args.samples, unshaped=args.unshaped, delay_ms=args.delay_ms, loss_pct=args.loss_pct,
        tcp_probe=args.tcp_probe, ready_timeout=args.ready_timeout, json=args.json,
    ))
