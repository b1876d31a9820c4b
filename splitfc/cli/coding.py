"""Feature coding commands: ``codecs``, ``encode``, ``decode``, ``inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from splitfc.common.errors import SplitfcError

ORDER = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codecs", help="list codecs, their availability and rate points")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_codecs)

    p = sub.add_parser("encode", help="code a .npy feature tensor into a .sfc bitstream")
    p.add_argument("features", type=Path, help="feature tensor (.npy) in the split's layout")
    p.add_argument("--split", required=True, help="split id, e.g. dinov2-cls")
    p.add_argument("--codec", required=True, help="codec name (see splitfc codecs)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--qp", type=int, help="rate: QP for vtm/vvenc/hevc, quality index for learned codecs")
    rate.add_argument("--quality", type=int, help="alias of --qp for learned codecs")
    p.add_argument("--raw-dtype", choices=["float32", "float16", "bfloat16"], help="raw codec: stored dtype")
    p.add_argument("--zstd", type=int, default=0, metavar="LEVEL", help="raw codec: zstd level (0 = off)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .sfc file")
    p.add_argument("--json", action="store_true", help="print the bitstream stats as JSON")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a .sfc bitstream into a .npy feature tensor")
    p.add_argument("bitstream", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="output .npy file")
    p.add_argument("--max-elements", type=int, metavar="N",
                   help="refuse a bitstream whose header claims more feature elements (default: the split's paper "
                        "shape, CSR at 8192 tokens, as the cloud; a few payload bytes may claim gigabytes)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("inspect", help="show a .sfc bitstream's header and rate")
    p.add_argument("bitstream", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)


def cmd_codecs(args: argparse.Namespace) -> int:
    from splitfc.common.codecs import CODECS

    rows = []
    for name, cls in CODECS.items():
        reason = cls.unavailable_reason()
        rows.append({
            "name": name,
            "available": reason is None,
            "reason": reason,
            "rate": cls.rate_name,
            "rates": list(cls.rates),
            "truncation": cls.truncation.value if cls.truncation else None,
            "description": cls.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = "yes" if r["available"] else f"no ({r['reason']})"
            print(f"{r['name']:<12} available: {state}\n{'':<12} {r['description']}; {r['rate']} {r['rates']}")
    return 0


def load_features(path: Path) -> np.ndarray:
    """Load a .npy feature tensor without pickles."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SplitfcError(f"no such feature file: {path}") from None
    except (ValueError, OSError) as exc:
        raise SplitfcError(f"{path} is not a readable .npy array: {exc}") from None


def cmd_encode(args: argparse.Namespace) -> int:
    from splitfc.common.bitstream import bitstream_stats, encode_features, write_sfc
    from splitfc.common.codecs import get_codec
    from splitfc.common.codecs.raw import RawCodec
    from splitfc.common.specs import get_split

    spec = get_split(args.split)
    codec = get_codec(args.codec)
    if isinstance(codec, RawCodec):
        codec = RawCodec(store_dtype=args.raw_dtype, zstd_level=args.zstd)
    rate = args.qp if args.qp is not None else args.quality
    if rate is None:
        if codec.rate_name != "none":
            raise SplitfcError(f"codec {codec.name} needs --qp (its {codec.rate_name}), e.g. {codec.rates}")
        rate = 0
    features = load_features(args.features)
    msg = encode_features(features, spec, codec, rate)
    write_sfc(args.output, msg)
    stats = bitstream_stats(msg)
    if args.json:
        print(json.dumps(stats.as_dict()))
    else:
        print(f"{args.output}: {stats.total_bytes} bytes, {stats.bpfp:.4f} BPFP ({stats.codec}, {spec.id})")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from splitfc.cloud.settings import default_max_elements
    from splitfc.common.bitstream import decode_features, read_sfc
    from splitfc.common.specs import SPLITS

    if args.max_elements is not None and args.max_elements < 1:
        raise SplitfcError(f"--max-elements must be at least 1, got {args.max_elements}")
    msg = read_sfc(args.bitstream)
    limit = args.max_elements
    if limit is None and msg.split in SPLITS:
        limit = default_max_elements(msg.split)
    features = decode_features(msg, max_elements=limit)
    np.save(args.output, features, allow_pickle=False)
    print(f"{args.output}: {features.dtype} {tuple(features.shape)}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from splitfc.common.bitstream import bitstream_stats, read_sfc, validate_bitstream

    msg = read_sfc(args.bitstream)
    validate_bitstream(msg)
    info = bitstream_stats(msg).as_dict()
    info["format_version"] = msg.format_version
    info["codec_extra"] = dict(msg.codec.extra)
    if msg.HasField("preprocessing"):
        pre = msg.preprocessing
        info["preprocessing"] = {
            "ranges": [[r.low, r.high] for r in pre.ranges],
            "bit_depth": pre.bit_depth,
            "packing": pre.packing,
            "frame": [pre.frame_height, pre.frame_width],
        }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>18}: {v}")
    return 0
