"""What the integer hyper-synthesis and the float64 synthesis cost: the measurements in docs/hyperprior.md.

``python -m splitfc.common.learned.exactness [--samples 8] [--bits 12,12 16,16 20,20] [--reps 5]`` prints

* per split and quality, the payload bytes of the tiny preset's held-out features coded with CDF indexes from
  the integer ``h_s`` (each F, G given) and from CompressAI's float ``build_indexes(h_s(z_hat))``, and how
  many of the ``y`` indexes differ (the float indexes are still valid codes on the machine that made them);
* decode times of one feature tensor with the integer or the float ``h_s`` and the float64 or float32 ``g_s``.

Development tool only: the float variants are not decodable on another CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from splitfc.common.learned.model import (
    CodingNets,
    FeatureHyperprior,
    IntegerHyperSynthesis,
    deterministic_cpu,
    frame_tensor,
    scale_indexes,
    scale_thresholds,
    tiles,
)

QUALITIES = (1, 2, 3, 4, 5)


def _float_indexes(self: FeatureHyperprior, z_hat: torch.Tensor, error: object = None) -> torch.Tensor:
    return self.gaussian_conditional.build_indexes(self.h_s(z_hat))


def _float32_synthesis(self: FeatureHyperprior, y_hat: torch.Tensor) -> torch.Tensor:
    return self.g_s(y_hat.to(torch.float32))


@contextmanager
def variant(float_h_s: bool = False, float32_g_s: bool = False) -> Iterator[None]:
    """Code with CompressAI's float ``h_s`` indexes and/or a float32 ``g_s`` (in this process only)."""
    saved = FeatureHyperprior.hyper_indexes, FeatureHyperprior.synthesize
    try:
        if float_h_s:
            FeatureHyperprior.hyper_indexes = _float_indexes  # type: ignore[method-assign,assignment]
        if float32_g_s:
            FeatureHyperprior.synthesize = _float32_synthesis  # type: ignore[method-assign]
        yield
    finally:
        FeatureHyperprior.hyper_indexes, FeatureHyperprior.synthesize = saved  # type: ignore[method-assign]


@contextmanager
def fixed_point(model: FeatureHyperprior, act_bits: int, weight_bits: int) -> Iterator[None]:
    """Code with an integer ``h_s`` of other F, G (the model's own nets are restored afterwards)."""
    nets = model.coding
    model._coding = CodingNets(IntegerHyperSynthesis(model.h_s, act_bits, weight_bits), nets.g_s,
                               scale_thresholds(model.gaussian_conditional.scale_table, act_bits))
    try:
        yield
    finally:
        model._coding = nets


def tiny_frames(split: str, samples: int) -> list[np.ndarray]:
    """Packed 10-bit frames of the tiny preset's held-out samples of ``split``."""
    from splitfc.common.codecs.hyperprior import HyperpriorCodec
    from splitfc.common.models import get_split_model, tiny_samples
    from splitfc.common.specs import get_split

    net = get_split_model(split, "tiny")
    codec, spec = HyperpriorCodec(), get_split(split)
    feats = [np.asarray(net.head(s.inputs), dtype=np.float32) for s in tiny_samples(split, samples)]
    return [codec.plan(spec, x.shape).to_frame(x) for x in feats]


def _differing_indexes(model: FeatureHyperprior, frame: np.ndarray, tile: int) -> tuple[int, int]:
    differ = total = 0
    with deterministic_cpu():
        for top, left, th, tw in tiles(*frame.shape, tile):
            z = model.h_a(torch.abs(model.g_a(frame_tensor(frame[top:top + th, left:left + tw], 1023))))
            medians = model.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
            z_hat = model.entropy_bottleneck.quantize(z, "dequantize", medians)
            ref = model.gaussian_conditional.build_indexes(model.h_s(z_hat))
            nets = model.coding
            got = scale_indexes(nets.h_s(nets.h_s.to_fixed(z_hat)), nets.thresholds)
            differ += int((got != ref).sum())
            total += ref.numel()
    return differ, total


def rate_report(splits: list[str], samples: int, bits: list[tuple[int, int]]) -> list[str]:
    from splitfc.common.codecs.hyperprior import HyperpriorCodec
    from splitfc.common.learned.engine import encode_with

    lines = ["| split | quality | float h_s bytes | " + " | ".join(f"F={f} G={g}: bytes, indexes differing"
                                                           for f, g in bits) + " |",
             "|---|---|---|" + "---|" * len(bits)]
    sums = {b: [0, 0, 0] for b in bits}
    base_sum = 0
    for split in splits:
        frames = tiny_frames(split, samples)
        for q in QUALITIES:
            model, cfg = HyperpriorCodec().model_for(split, q)
            with variant(float_h_s=True):
                base = sum(len(encode_with(model, cfg, f, 10)[0]) for f in frames)
            base_sum += base
            cells = []
            for b in bits:
                with fixed_point(model, *b):
                    n = sum(len(encode_with(model, cfg, f, 10)[0]) for f in frames)
                    counts = [_differing_indexes(model, f, cfg.tile) for f in frames]
                d, t = sum(c[0] for c in counts), sum(c[1] for c in counts)
                sums[b][0] += n
                sums[b][1] += d
                sums[b][2] += t
                cells.append(f"{n} ({100 * (n - base) / base:+.3f} %), {d} of {t}")
            lines.append(f"| {split} | {q} | {base} | " + " | ".join(cells) + " |")
    cells = [f"{n} ({100 * (n - base_sum) / base_sum:+.4f} %), {d} of {t} ({100 * d / max(t, 1):.4f} %)"
             for n, d, t in sums.values()]
    lines.append(f"| all | - | {base_sum} | " + " | ".join(cells) + " |")
    return lines


def timing_report(reps: int) -> list[str]:
    from splitfc.common.codecs.hyperprior import HyperpriorCodec
    from splitfc.common.learned.data import synthetic_features
    from splitfc.common.learned.engine import decode_with, encode_with
    from splitfc.common.specs import get_split

    cases = [("dinov2-cls", tiny_frames("dinov2-cls", 1)[0], "tiny"),
             ("sd3-tti", tiny_frames("sd3-tti", 1)[0], "tiny")]
    for split, shape in (("dinov2-cls", (257, 1536)), ("dinov2-seg", (2, 1370, 1536))):
        x = synthetic_features(get_split(split), np.random.default_rng(0), shape)
        cases.append((split, HyperpriorCodec().plan(get_split(split), shape).to_frame(x), "paper shape, synthetic"))
    names = {(False, False): "integer h_s, float64 g_s (shipped)", (True, False): "float h_s, float64 g_s",
             (False, True): "integer h_s, float32 g_s", (True, True): "float h_s, float32 g_s (before)"}
    lines = ["| split | frame | " + " | ".join(names.values()) + " |", "|---|---|" + "---|" * len(names)]
    for split, frame, label in cases:
        model, cfg = HyperpriorCodec().model_for(split, 3)
        cells = []
        for flags in names:
            with variant(*flags):
                payload, _ = encode_with(model, cfg, frame, 10)
                decode_with(model, payload, *frame.shape, 10)
                best = float("inf")
                for _ in range(reps):
                    t0 = time.perf_counter()
                    decode_with(model, payload, *frame.shape, 10)
                    best = min(best, time.perf_counter() - t0)
            cells.append(f"{1000 * best:.1f} ms")
        lines.append(f"| {split} | {frame.shape[0]}x{frame.shape[1]} ({label}) | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from splitfc.common.specs import SPLITS

    p = argparse.ArgumentParser(prog="python -m splitfc.common.learned.exactness", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8, help="tiny-preset held-out samples per split")
    p.add_argument("--bits", nargs="+", default=["16,16"], help="F,G pairs of the integer h_s to compare")
    p.add_argument("--reps", type=int, default=5, help="decode repetitions (the fastest counts)")
    p.add_argument("--skip-rate", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    args = p.parse_args(argv)
    bits = [(int(f), int(g)) for f, g in (b.split(",") for b in args.bits)]
    if not args.skip_rate:
        print("\n".join(rate_report(list(SPLITS), args.samples, bits)), flush=True)
    if not args.skip_timing:
        print("\n".join(timing_report(args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
