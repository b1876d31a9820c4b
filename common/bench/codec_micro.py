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
"""

from __future__ import annotations

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


def synthetic_features(split_id: str, seed: int = 0, df: float = 3.0, scale: float = 2.0) -> np.ndarray:
    """Student-t (``df`` degrees of freedom) float32 features of the split's paper shape."""
    spec = get_split(split_id)
    shape = tuple(DEFAULT_TOKENS if s is None else s for s in spec.paper_shape)
    rng = np.random.default_rng(seed)
    return (rng.standard_t(df, size=shape) * scale).astype(np.float32)


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
