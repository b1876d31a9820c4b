"""Codec micro-benchmark: BPFP, feature MSE and encode/decode time on one synthetic feature.

The feature is random heavy-tailed data (Student-t) of a split's paper shape,
e.g. 257x1536 for ``dinov2-cls``: it exercises the whole coding path (Table 4
truncation, 10-bit quantization, packing, core codec, bitstream) without
needing a model. Times are wall-clock, best of ``repeats`` runs, taken with
nothing else running in the process: peak memory is measured in a pass of its
own (one encode + decode under `measure_peak`) before the timed runs.

``digest_ms`` is the cost of the bitstream's integrity check: the time of one
`content_digest` of the content the decoder verifies (its decoded frame, or raw's
stored bytes). An encode computes it once and a decode once more, so a round
trip spends about twice ``digest_ms`` on it.

Speed at a target rate (`run_speed_bench`, issue 15's criterion): for each split's paper
shape, `rate_for_bpfp` searches the codec's integer rate knob (bisection over its
``rate_bounds``, which needs the knob to be monotonic in BPFP) for the point whose BPFP is
closest to the target in log scale, then times encode + decode there and reports feature
points per second. With ``one_core`` the process is pinned to one CPU
(``os.sched_setaffinity``) for the whole measurement, so every thread a library starts shares
that core.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from splitfc.common import integrity
from splitfc.common.bench.memory import measure_peak
from splitfc.common.bitstream import bitstream_stats, decode_features, encode_features
from splitfc.common.codecs import CODECS, get_codec
from splitfc.common.errors import SplitfcError
from splitfc.common.specs import get_split

# Llama3 CSR has a variable token count; use the paper's typical prompt length.
DEFAULT_TOKENS = 512


@dataclass(frozen=True)
class CodecPoint:
    """One (codec, rate) measurement."""

    codec: str
    rate: int
    bpfp: float
    payload_bytes: int
    feature_mse: float
    encode_ms: float
    decode_ms: float
    digest_ms: float | None
    """Time of one integrity digest of the decoded content (None if the decoder checked none)."""
    peak_rss_mb: float
    peak_alloc_mb: float


MIXING_SEED = 1234
"""Seed of the channel mixing of ``correlated`` synthetic features: the same for every sample seed."""


def synthetic_features(split_id: str, seed: int = 0, df: float = 3.0, scale: float = 2.0,
                       correlated: bool = False) -> np.ndarray:
    """Student-t (``df`` degrees of freedom) float32 features of the split's paper shape.

    ``correlated``: the i.i.d. values are mixed across the channel axis (the layout's ``channels``)
    by one fixed matrix ``Q diag(s)`` (``Q`` a random orthogonal matrix, ``s_k ∝ (k + 1)^-1``,
    scaled so the root mean square stays ``scale * sqrt(df / (df - 2))``, seeded by `MIXING_SEED`),
    so the channels are correlated as in a real model's features and a channel PCA fitted on other
    seeds finds the same principal directions.
    """
    spec = get_split(split_id)
    shape = tuple(DEFAULT_TOKENS if s is None else s for s in spec.paper_shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_t(df, size=shape) * scale
    if correlated:
        axis = spec.layout.index("channels") if "channels" in spec.layout else len(shape) - 1
        c = shape[axis]
        mix_rng = np.random.default_rng(MIXING_SEED + c)
        q, _ = np.linalg.qr(mix_rng.standard_normal((c, c)))
        s = 1.0 / np.arange(1, c + 1)
        s *= np.sqrt(c / np.sum(s * s))
        x = np.moveaxis(np.moveaxis(x, axis, -1) @ (q * s).T, -1, axis)
    return x.astype(np.float32)


@contextmanager
def verified_content() -> Iterator[list[Any]]:
    """Record what decoders hand to `integrity.verify_digest` (the content it digests).

    `verify_digest` looks `content_digest` up in `integrity` when it runs, so the
    recorder wraps that name for the duration of the block (single-threaded use).
    """
    seen: list[Any] = []
    digest = integrity.content_digest

    def recording(content: Any) -> bytes:
        seen.append(content)
        return digest(content)

    integrity.content_digest = recording
    try:
        yield seen
    finally:
        integrity.content_digest = digest


def measure(features: np.ndarray, split_id: str, codec_name: str, rate: int, repeats: int = 1) -> CodecPoint:
    """Peak memory of one encode + decode, then ``repeats`` timed runs (the fastest kept)."""
    codec = get_codec(codec_name)
    with measure_peak() as mem, verified_content() as seen:
        decode_features(encode_features(features, split_id, codec, rate))
    enc_s, dec_s = [], []
    msg = None
    decoded = None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        msg = encode_features(features, split_id, codec, rate)
        t1 = time.perf_counter()
        decoded = decode_features(msg)
        t2 = time.perf_counter()
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
    assert msg is not None and decoded is not None
    digest_ms = None
    if seen:
        digest_s = []
        for _ in range(max(5, repeats)):
            t0 = time.perf_counter()
            integrity.content_digest(seen[-1])
            digest_s.append(time.perf_counter() - t0)
        digest_ms = min(digest_s) * 1e3
    stats = bitstream_stats(msg)
    mse = float(np.mean((features.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return CodecPoint(codec_name, rate, stats.bpfp, stats.payload_bits // 8, mse, min(enc_s) * 1e3,
                      min(dec_s) * 1e3, digest_ms, round(mem.peak_rss_mb, 2), round(mem.peak_alloc_mb, 2))


def run_codec_bench(
    split_id: str = "dinov2-cls", codecs: Sequence[str] | None = None, rates: Sequence[int] | None = None,
    repeats: int = 1, seed: int = 0,
) -> dict[str, object]:
    """Measure every available codec at its paper rate points (or ``rates``)."""
    spec = get_split(split_id)
    features = synthetic_features(split_id, seed)
    names = list(codecs) if codecs else list(CODECS)
    points: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    for name in names:
        cls = type(get_codec(name))
        reason = cls.unavailable_reason()
        if reason is not None:
            skipped[name] = reason
            continue
        codec_rates = list(rates) if rates and cls.rate_name != "none" else list(cls.rates)
        for rate in codec_rates:
            try:
                points.append(asdict(measure(features, split_id, name, rate, repeats)))
            except (SplitfcError, ValueError) as exc:
                skipped[f"{name}@{rate}"] = str(exc)
    return {
        "split": spec.id,
        "shape": list(features.shape),
        "features": f"Student-t df=3 x 2.0, seed {seed}, float32",
        "repeats": repeats,
        "points": points,
        "skipped": skipped,
    }


def format_table(result: dict[str, object]) -> str:
    """A Markdown table of the points."""
    lines = [
        "| codec | rate | BPFP | feature MSE | encode ms | decode ms | digest ms | peak RSS MB | peak alloc MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["points"]:  # type: ignore[union-attr]
        digest = "-" if p.get("digest_ms") is None else f"{p['digest_ms']:.2f}"
        lines.append(
            f"| {p['codec']} | {p['rate']} | {p['bpfp']:.4f} | {p['feature_mse']:.4g} | "
            f"{p['encode_ms']:.1f} | {p['decode_ms']:.1f} | {digest} | {p['peak_rss_mb']:.0f} | "
            f"{p['peak_alloc_mb']:.1f} |"
        )
    for name, why in result["skipped"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- speed at a target BPFP


@contextmanager
def one_core(enabled: bool = True) -> Iterator[int | None]:
    """Pin this process (all its threads) to one CPU for the block; yields the CPU, or None when not pinned.

    Raises `SplitfcError` when pinning was asked for and the platform has no ``sched_setaffinity``.
    """
    if not enabled:
        yield None
        return
    if not hasattr(os, "sched_setaffinity"):
        raise SplitfcError("--one-core needs os.sched_setaffinity (Linux)")
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def bpfp_at(features: np.ndarray, split_id: str, codec_name: str, rate: int) -> float:
    """Payload bits per feature point of one encode of ``features`` at ``rate``."""
    return bitstream_stats(encode_features(features, split_id, get_codec(codec_name), rate)).bpfp


def rate_for_bpfp(features: np.ndarray, split_id: str, codec_name: str, target: float
                  ) -> tuple[int, float, list[tuple[int, float]]]:
    """The integer rate whose BPFP is closest to ``target`` (log scale): ``(rate, bpfp, tried)``.

    Bisection over the codec's ``rate_bounds``; the direction comes from ``rate_name`` (a
    ``quality`` knob: higher = more bits; ``qp``/``step``: higher = fewer bits). ``tried`` lists
    every (rate, BPFP) encoded. Raises `SplitfcError` for a codec without a rate knob or a
    non-positive target.
    """
    if not (target > 0 and math.isfinite(target)):
        raise SplitfcError(f"target BPFP must be positive, got {target!r}")
    cls = type(get_codec(codec_name))
    if cls.rate_name == "none":
        raise SplitfcError(f"codec {codec_name} has no rate knob to search")
    more_bits_up = cls.rate_name == "quality"
    lo, hi = cls.rate_bounds
    tried: dict[int, float] = {}

    def at(rate: int) -> float:
        if rate not in tried:
            tried[rate] = bpfp_at(features, split_id, codec_name, rate)
        return tried[rate]

    # Invariant: `lo` gives more bits than the target side of `hi` (in knob order).
    while hi - lo > 1:
        mid = (lo + hi) // 2
        above = at(mid) > target
        if above != more_bits_up:  # too many bits on a qp/step knob: go coarser (up)
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda r: abs(math.log(max(at(r), 1e-12) / target)))
    return best, at(best), sorted(tried.items())


def run_speed_bench(splits: Sequence[str], codecs: Sequence[str], target_bpfp: float, repeats: int = 3,
                    seed: int = 0, pin_one_core: bool = True, correlated: bool = False) -> dict[str, object]:
    """Encode + decode time at the rate closest to ``target_bpfp``, per split's paper shape and codec.

    Rows: split, shape, feature_points, codec, rate, bpfp, encode_ms, decode_ms, total_ms
    (encode + decode, each the fastest of ``repeats``), points_per_s (feature points / total
    seconds), feature_mse, tried (the search's (rate, BPFP) pairs). Unavailable codecs are in
    ``skipped``.
    """
    rows: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    with one_core(pin_one_core) as cpu:
        for split_id in splits:
            features = synthetic_features(split_id, seed, correlated=correlated)
            for name in codecs:
                reason = type(get_codec(name)).unavailable_reason()
                if reason is not None:
                    skipped[name] = reason
                    continue
                try:
                    rate, _, tried = rate_for_bpfp(features, split_id, name, target_bpfp)
                    point = measure(features, split_id, name, rate, repeats)
                except (SplitfcError, ValueError) as exc:
                    skipped[f"{name}@{split_id}"] = str(exc)
                    continue
                total = point.encode_ms + point.decode_ms
                rows.append({
                    "split": split_id, "shape": list(features.shape), "feature_points": int(features.size),
                    "codec": name, "rate": rate, "bpfp": point.bpfp, "feature_mse": point.feature_mse,
                    "encode_ms": point.encode_ms, "decode_ms": point.decode_ms, "total_ms": total,
                    "points_per_s": features.size / (total / 1e3) if total > 0 else None,
                    "peak_alloc_mb": point.peak_alloc_mb, "tried": [list(t) for t in tried],
                })
    return {
        "target_bpfp": target_bpfp, "one_core": cpu is not None, "cpu": cpu, "repeats": repeats,
        "features": f"Student-t df=3 x 2.0{', channels mixed (correlated)' if correlated else ''}, seed {seed}, "
                    f"float32, each split's paper shape (CSR: {DEFAULT_TOKENS} tokens)",
        "rows": rows, "skipped": skipped,
    }


def format_speed_table(result: dict[str, object]) -> str:
    """A Markdown table of `run_speed_bench`'s rows."""
    lines = [
        "| split | shape | codec | rate | BPFP | feature MSE | encode ms | decode ms | encode + decode ms | "
        "M points/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:  # type: ignore[union-attr]
        pps = "-" if r["points_per_s"] is None else f"{r['points_per_s'] / 1e6:.1f}"
        lines.append(
            f"| {r['split']} | {'x'.join(map(str, r['shape']))} | {r['codec']} | {r['rate']} | {r['bpfp']:.3f} | "
            f"{r['feature_mse']:.4g} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} | {r['total_ms']:.1f} | {pps} |"
        )
    for name, why in result["skipped"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | skipped: {why} | | | | | | | | |")
    return "\n".join(lines)
