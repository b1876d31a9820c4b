"""``splitfc bench-ffmpeg-backends``: per-request HEVC/VVC coding time, in-process (PyAV) vs one ffmpeg process.

The same synthetic feature (`codec_micro.synthetic_features`' Student-t data, at ``--shape``; default
the tiny ``dinov2-cls`` head output, 65 x 128) is coded and decoded through the whole bitstream path
(`encode_features` / `decode_features`: truncation, quantization, packing, core codec, integrity
digest) under each ``SPLITFC_FFMPEG_BACKEND`` in turn, rounds alternating between the backends so that
a busy machine disturbs both alike; the fastest run of each is kept (`codec_micro.measure`). The
difference of the two decode times is what the in-process path saves per request: the ffmpeg process
start and the pipe round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

ORDER = 55
BACKENDS = ("subprocess", "pyav")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-ffmpeg-backends",
        help="HEVC/VVC encode/decode time per request: in-process PyAV vs an ffmpeg process, side by side",
    )
    p.add_argument("--codecs", default="hevc,vvenc", help="comma-separated ffmpeg codecs (default hevc,vvenc)")
    p.add_argument("--rates", default="32", help="comma-separated QPs (default 32)")
    p.add_argument("--split", default="dinov2-cls", help="split whose layout codes the feature (default dinov2-cls)")
    p.add_argument("--shape", default="65x128",
                   help="feature shape, e.g. 65x128 (default: the tiny dinov2-cls head output)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds alternating the backends (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, help="write the results as JSON")
    p.set_defaults(func=cmd_bench_ffmpeg_backends)


@contextmanager
def ffmpeg_backend(name: str) -> Iterator[None]:
    """Run the block with ``SPLITFC_FFMPEG_BACKEND=name`` (the process-wide codec settings re-read)."""
    from splitfc.common.settings import codec_settings

    old = os.environ.get("SPLITFC_FFMPEG_BACKEND")
    os.environ["SPLITFC_FFMPEG_BACKEND"] = name
    codec_settings.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPLITFC_FFMPEG_BACKEND", None)
        else:
            os.environ["SPLITFC_FFMPEG_BACKEND"] = old
        codec_settings.cache_clear()


def _parse_shape(text: str) -> tuple[int, ...]:
    from splitfc.common.errors import SplitfcError

    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise SplitfcError(f"--shape must be positive sizes joined by x, e.g. 65x128, got {text!r}")
    return shape


def pyav_missing(codec_name: str) -> str | None:
    """None when PyAV runs ``codec_name``'s decoder in-process (and, for hevc, its encoder), else why not."""
    from splitfc.common.codecs import get_codec
    from splitfc.common.codecs._pyav import pyav_has

    codec = get_codec(codec_name)
    decoder = getattr(codec, "decoder", None)
    if decoder is None:
        return f"{codec_name} is not an ffmpeg codec"
    if not pyav_has(decoder):
        return f"PyAV has no {decoder} decoder (the pyav backend would fall back to the ffmpeg process)"
    return None


def pyav_encodes(codec_name: str) -> bool:
    """Whether ``codec_name`` encodes in-process under the pyav backend (hevc through PyAV's libx265;
    vvenc has no PyAV encoder and runs the ffmpeg process under either backend)."""
    from splitfc.common.codecs import get_codec
    from splitfc.common.codecs._ffmpeg import FfmpegIntraCodec
    from splitfc.common.codecs._pyav import pyav_has

    codec = get_codec(codec_name)
    if not isinstance(codec, FfmpegIntraCodec):
        return False
    overrides = type(codec).encode_frame is not FfmpegIntraCodec.encode_frame
    return overrides and pyav_has(codec.encoder, "w")


def process_start_ms(runs: int = 10) -> float | None:
    """Fastest of ``runs`` starts of the ffmpeg binary doing nothing (``ffmpeg -version``), in ms:
    the process start-up cost that the in-process path saves (None without ffmpeg)."""
    import subprocess
    import time

    from splitfc.common.codecs._external import ffmpeg_path
    from splitfc.common.errors import SplitfcError

    try:
        binary = ffmpeg_path()
    except SplitfcError:
        return None
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([binary, "-hide_banner", "-version"], capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def run_backends(
    codecs: Sequence[str], rates: Sequence[int], split: str, shape: tuple[int, ...], repeats: int, rounds: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure each codec and rate under both backends -> JSON-ready result.

    ``points``: one row per codec and rate with ``<backend>_encode_ms`` / ``<backend>_decode_ms``
    (fastest of ``rounds`` x ``repeats``, milliseconds per request), ``decode_saved_ms`` (subprocess -
    pyav), ``same_reconstruction`` (the feature MSE equal under both: the decoders give the same
    picture), the payload size per backend (PyAV's libx265 writes other bytes of the same length) and
    ``encode_in_process`` (`pyav_encodes`: False means both encode columns time the ffmpeg process).
    ``skipped``: codec -> reason (unavailable here, or PyAV lacking its decoder). ``process_start_ms``:
    `process_start_ms`, the bare ffmpeg process start to compare ``decode_saved_ms`` with.
    """
    import numpy as np

    from splitfc.common.bench.codec_micro import measure, synthetic_features
    from splitfc.common.codecs import get_codec

    base = synthetic_features(split, seed)
    rng = np.random.default_rng(seed)
    features = (rng.standard_t(3.0, size=shape) * 2.0).astype(np.float32) if base.shape != shape else base
    points: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in codecs:
        reason = type(get_codec(name)).unavailable_reason() or pyav_missing(name)
        if reason is not None:
            skipped[name] = reason
            continue
        for rate in rates:
            best: dict[str, Any] = {}
            for _ in range(rounds):
                for backend in BACKENDS:
                    with ffmpeg_backend(backend):
                        point = asdict(measure(features, split, name, rate, repeats))
                    prev = best.get(backend)
                    if prev is None:
                        best[backend] = point
                    else:
                        prev["encode_ms"] = min(prev["encode_ms"], point["encode_ms"])
                        prev["decode_ms"] = min(prev["decode_ms"], point["decode_ms"])
            sub, pav = best["subprocess"], best["pyav"]
            points.append({
                "codec": name, "rate": rate, "encode_in_process": pyav_encodes(name),
                "subprocess_encode_ms": sub["encode_ms"], "pyav_encode_ms": pav["encode_ms"],
                "subprocess_decode_ms": sub["decode_ms"], "pyav_decode_ms": pav["decode_ms"],
                "decode_saved_ms": sub["decode_ms"] - pav["decode_ms"],
                "subprocess_payload_bytes": sub["payload_bytes"], "pyav_payload_bytes": pav["payload_bytes"],
                "same_reconstruction": sub["feature_mse"] == pav["feature_mse"],
            })
    return {
        "split": split, "shape": list(shape), "features": f"Student-t df=3 x 2.0, seed {seed}, float32",
        "repeats": repeats, "rounds": rounds, "process_start_ms": process_start_ms(),
        "points": points, "skipped": skipped,
    }


def format_backends(result: dict[str, Any]) -> str:
    """A Markdown table: per codec and rate, both backends' encode and decode ms side by side."""
    lines = [
        "| codec | QP | encode ms subprocess | encode ms pyav | decode ms subprocess | decode ms pyav | "
        "decode saved ms | same reconstruction | encode in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for p in result["points"]:
        lines.append(
            f"| {p['codec']} | {p['rate']} | {p['subprocess_encode_ms']:.1f} | {p['pyav_encode_ms']:.1f} | "
            f"{p['subprocess_decode_ms']:.1f} | {p['pyav_decode_ms']:.1f} | {p['decode_saved_ms']:.1f} | "
            f"{'yes' if p['same_reconstruction'] else 'NO'} | {'yes' if p['encode_in_process'] else 'no'} |"
        )
    for name, why in result["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    return "\n".join(lines)


def cmd_bench_ffmpeg_backends(args: argparse.Namespace) -> int:
    from splitfc.common.errors import SplitfcError

    if args.repeats < 1 or args.rounds < 1:
        raise SplitfcError("--repeats and --rounds must be at least 1")
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        raise SplitfcError(f"--rates must be comma-separated integers, got {args.rates!r}") from None
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    result = run_backends(codecs, rates, args.split, _parse_shape(args.shape), args.repeats, args.rounds, args.seed)
    print(f"split {result['split']}, features {'x'.join(map(str, result['shape']))}, "
          f"fastest of {args.rounds} x {args.repeats} runs per backend")
    print(format_backends(result))
    if result["process_start_ms"] is not None:
        print(f"a bare ffmpeg process start (ffmpeg -version): {result['process_start_ms']:.1f} ms")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
