"""The hyperprior decodes the same on any CPU: integer-exact CDF indexes, fixed tables, float64 synthesis, digest.

The rANS decoder picks each ``y`` symbol's CDF by an index computed from the hyper-synthesis ``h_s``. With a
float ``h_s`` one ulp of difference (another BLAS code path, thread count or CPU) flips an index and the stream
desynchronises. These tests check that the indexes come from an integer computation that float execution cannot
perturb, that it is what an int64 reference computes, that its exactness bound is enforced, and that a decoder
that still reconstructs differently is caught by the digest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from conftest import heavy_features
from test_hyperprior import tiny_features

from splitfc.common.bitstream import decode_features, encode_features, write_sfc
from splitfc.common.codecs.hyperprior import SHIPPED_DIR, checkpoint_path
from splitfc.common.errors import BitstreamError, CodecError, IntegrityError
from splitfc.common.learned import checkpoint as ckpt
from splitfc.common.learned.checkpoint import CheckpointError, load_checkpoint
from splitfc.common.learned.model import (
    ACT_FRAC_BITS,
    EXACT_LIMIT,
    WEIGHT_FRAC_BITS,
    FeatureHyperprior,
    deterministic_cpu,
    frame_tensor,
    scale_indexes,
)
from splitfc.common.learned.payload import unpack_payload
from splitfc.common.specs import get_split

F_BITS, G_BITS = ACT_FRAC_BITS, WEIGHT_FRAC_BITS

# Paper-shape dinov2-cls features whose quality-3 bitstreams decoded to garbage (30 % and 63 % of the values
# wrong) under MKL_CBWR=COMPATIBLE with the float h_s, on the AVX-512 machine this was written on (9 of the
# 120 seeds 0..119 did; every one of the 120 also had ~10 values off by one level from the float32 g_s).
DESYNC_SEEDS = (21, 23)


def _model(split: str, quality: int = 3) -> FeatureHyperprior:
    return load_checkpoint(checkpoint_path(split, quality, SHIPPED_DIR), expect_split=split)[0]


def _z_hat(model: FeatureHyperprior, features: np.ndarray, split: str) -> torch.Tensor:
    """The hyper-latent the decoder gets for the first tile of ``features`` (symbols + medians)."""
    from splitfc.common.codecs.hyperprior import HyperpriorCodec

    frame = HyperpriorCodec().plan(get_split(split), features.shape).to_frame(features)
    with deterministic_cpu():
        z = model.h_a(torch.abs(model.g_a(frame_tensor(frame[:1024, :1024], 1023))))
        medians = model.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        return model.entropy_bottleneck.quantize(z, "dequantize", medians)


# --- (a) decoding in other processes, with another MKL code path and thread count -------------------------------

_DECODE = """
import sys
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[1]))
from splitfc.common.bitstream import decode_features, read_sfc
for path in sys.argv[2:]:
    np.save(path + ".npy", decode_features(read_sfc(path)))
"""


def test_decoding_under_another_mkl_code_path_and_thread_count_gives_identical_tensors(tmp_path: Path) -> None:
    cases = [("dinov2-cls", heavy_features((257, 1536), seed=s), 3) for s in DESYNC_SEEDS]
    cases += [("dinov2-seg", tiny_features("dinov2-seg")[2], 5), ("dinov2-dpt", tiny_features("dinov2-dpt")[2], 4),
              ("llama3-csr", tiny_features("llama3-csr")[2], 5), ("sd3-tti", tiny_features("sd3-tti")[2], 3)]
    paths, expected = [], []
    for i, (split, x, q) in enumerate(cases):
        msg = encode_features(x, split, "hyperprior", q)
        expected.append(decode_features(msg))
        path = tmp_path / f"{i}-{split}.sfc"
        write_sfc(path, msg)
        paths.append(str(path))
    assert expected[0].shape == (257, 1536)
    for threads in (1, 2):
        env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, "-c", _DECODE, str(threads), *paths], env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        for path, want in zip(paths, expected, strict=True):
            got = np.load(path + ".npy")
            assert np.array_equal(got, want), (threads, path, float(np.mean(got != want)))


# --- (b) the integer h_s is an int64 computation ----------------------------------------------------------------


def _ref_conv(a: np.ndarray, w: np.ndarray, transposed: bool, stride: int, pad: int, out_pad: int) -> np.ndarray:
    """int64 (transposed) convolution of one CxHxW image, tap by tap (numpy integer dot products)."""
    _, h, wd = a.shape
    k = w.shape[-1]
    if not transposed:  # w: (out, in, k, k), cross-correlation
        ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
        ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad)))
        out = np.zeros((w.shape[0], ho, wo), dtype=np.int64)
        for ky in range(k):
            for kx in range(k):
                patch = ap[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
                out += np.tensordot(w[:, :, ky, kx], patch, axes=([1], [0]))
        return out
    # w: (in, out, k, k): input pixel (y, x) adds w * a to output (y*stride - pad + ky, x*stride - pad + kx)
    ho, wo = (h - 1) * stride - 2 * pad + k + out_pad, (wd - 1) * stride - 2 * pad + k + out_pad
    full = np.zeros((w.shape[1], (h - 1) * stride + k + out_pad, (wd - 1) * stride + k + out_pad), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            full[:, ky:ky + stride * (h - 1) + 1:stride, kx:kx + stride * (wd - 1) + 1:stride] += np.tensordot(
                w[:, :, ky, kx], a, axes=([0], [0]))
    return full[:, pad:pad + ho, pad:pad + wo]


def _ref_h_s(model: FeatureHyperprior, a: np.ndarray) -> np.ndarray:
    """The integer hyper-synthesis computed from the float weights with int64 numpy only."""
    for layer in list(model.h_s)[0::2]:
        transposed = isinstance(layer, torch.nn.ConvTranspose2d)
        w = np.rint(layer.weight.detach().numpy().astype(np.float64) * 2.0**G_BITS).astype(np.int64)
        b = np.rint(layer.bias.detach().numpy().astype(np.float64) * 2.0 ** (F_BITS + G_BITS)).astype(np.int64)
        out_pad = layer.output_padding[0] if transposed else 0
        acc = _ref_conv(a, w, transposed, layer.stride[0], layer.padding[0], out_pad) + b[:, None, None]
        a = (np.maximum(acc, 0) + (1 << (G_BITS - 1))) >> G_BITS
    return a


@pytest.mark.parametrize("split", ["dinov2-cls", "sd3-tti"])  # M = 32 and M = 128
def test_integer_h_s_equals_an_int64_reference(split: str) -> None:
    model = _model(split)
    nets = model.coding
    rng = np.random.default_rng(5)
    inputs = [nets.h_s.to_fixed(_z_hat(model, tiny_features(split)[0], split))[0].to(torch.int64).numpy()]
    # and larger, sign-mixed fixed-point inputs (up to |z| = 64), which real checkpoints rarely produce
    inputs.append(rng.integers(-(64 << F_BITS), 64 << F_BITS, size=(model.N, 3, 5), dtype=np.int64))
    for a in inputs:
        ref = _ref_h_s(model, a)
        with deterministic_cpu():
            got = nets.h_s(torch.from_numpy(a)[None].to(torch.float64))[0]
        assert torch.equal(got, torch.round(got))  # integer-valued
        assert np.array_equal(got.to(torch.int64).numpy(), ref)
        assert ref.max() > 0  # not a vacuous all-zero comparison


def test_scale_index_map_is_compressais_map_on_exact_values() -> None:
    model = _model("dinov2-cls")
    thr = model.coding.thresholds
    table = model.gaussian_conditional.scale_table.to(torch.float64)
    assert thr.dtype == torch.int64 and len(thr) == len(table) - 1
    # integer scales on both sides of every threshold, 0, and past the last scale
    s = torch.cat([thr - 1, thr, thr + 1, torch.tensor([0, 1, int(table[-1] * 2**F_BITS) + 5])]).clamp_min(0)
    got = scale_indexes(s, thr)
    # CompressAI's map on the exact values s / 2^F (float64 holds them exactly; the comparisons are exact)
    want = model.gaussian_conditional.build_indexes((s.to(torch.float64) / 2**F_BITS)[None, None, None])
    assert torch.equal(got, want.reshape(-1))
    assert set(got.tolist()) == set(range(64))


# --- (c) float execution perturbs the float h_s, never the integer one ----------------------------------------


def _permuted_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every conv sum its input channels in reverse order: the same maths, another rounding for floats."""
    conv2d, conv_t2d = F.conv2d, F.conv_transpose2d

    def rev_conv2d(x, w, *args, **kwargs):  # type: ignore[no-untyped-def]
        return conv2d(x.flip(1), w.flip(1), *args, **kwargs)

    def rev_conv_t2d(x, w, *args, **kwargs):  # type: ignore[no-untyped-def]
        return conv_t2d(x.flip(1), w.flip(0), *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", rev_conv2d)
    monkeypatch.setattr(F, "conv_transpose2d", rev_conv_t2d)


def test_float_h_s_is_one_ulp_fragile_and_integer_h_s_ignores_the_summation_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model("dinov2-cls")
    gc = model.gaussian_conditional
    # One ulp at a table scale moves CompressAI's float index by one: the failure mode of a float h_s.
    t = gc.scale_table[10:11].reshape(1, 1, 1, 1)
    assert int(gc.build_indexes(t)) == 10
    assert int(gc.build_indexes(torch.nextafter(t, torch.tensor(np.inf)))) == 11
    z_hat = _z_hat(model, heavy_features((257, 1536), seed=DESYNC_SEEDS[0]), "dinov2-cls")
    nets = model.coding
    with deterministic_cpu():
        float_ref = model.h_s(z_hat)
        int_ref = nets.h_s(nets.h_s.to_fixed(z_hat))
        idx_ref = model.hyper_indexes(z_hat)
        _permuted_convs(monkeypatch)
        float_rev = model.h_s(z_hat)
        int_rev = nets.h_s(nets.h_s.to_fixed(z_hat))
        idx_rev = model.hyper_indexes(z_hat)
    # The reversed order does change the float network (so the perturbation is real) ...
    assert not torch.equal(float_ref, float_rev)
    # ... and changes nothing in the integer one, nor in the indexes the codec uses.
    assert torch.equal(int_ref, int_rev)
    assert torch.equal(idx_ref, idx_rev)
    assert idx_ref.dtype == torch.int32 and int(idx_ref.max()) > 0


# --- (d) the exactness bound ------------------------------------------------------------------------------------


def test_bound_is_enforced_before_any_inexact_sum() -> None:
    model = _model("sd3-tti")
    ih = model.coding.h_s
    for i, (lay, mod) in enumerate(zip(ih.layers, list(model.h_s)[0::2], strict=True)):
        # L1 norms recomputed here, per output channel with each layer's own weight layout
        w = torch.round(mod.weight.detach().to(torch.float64) * 2.0**G_BITS).to(torch.int64).abs()
        l1 = int((w.sum(dim=(0, 2, 3)) if lay.transposed else w.sum(dim=(1, 2, 3))).max())
        assert lay.weight_l1 == l1
        m = ih.max_input(i)
        assert lay.bound(m, G_BITS) < EXACT_LIMIT <= lay.bound(m + 1, G_BITS)
        ok = torch.zeros(1, mod.in_channels, 2, 2, dtype=torch.float64)
        ok[0, 0, 0, 0] = -m
        ih.check(i, ok)  # exactly at the limit: accepted
        ok[0, 0, 0, 0] = -(m + 1)
        with pytest.raises(CodecError, match="exactly"):
            ih.check(i, ok)
    # the codec refuses hyper-latents past the limit: BitstreamError for a decoder, CodecError for an encoder
    huge = torch.zeros(1, model.N, 2, 2)
    huge[0, 3, 1, 1] = 2.0**40
    with pytest.raises(BitstreamError, match="cannot compute layer 0 exactly"):
        model.hyper_indexes(huge, BitstreamError)
    with pytest.raises(CodecError, match="cannot compute layer 0 exactly"):
        model.hyper_indexes(huge)
    with pytest.raises(CodecError):
        model.hyper_indexes(torch.full((1, model.N, 2, 2), float("nan")))


def test_worst_case_input_at_the_bound_is_still_exact() -> None:
    """The last layer (3x3 conv, stride 1) on its largest accepted input aligned with the signs of one output
    channel's weights: the sum reaches past 2^52 and float64 still equals the int64 value."""
    model = _model("sd3-tti")
    ih = model.coding.h_s
    lay = ih.layers[-1]
    w = lay.weight.to(torch.int64)  # (out, in, 3, 3)
    o = int(w.abs().sum(dim=(1, 2, 3)).argmax())
    m = ih.max_input(len(ih.layers) - 1)
    a = torch.zeros(1, w.shape[1], 3, 3, dtype=torch.float64)
    a[0] = torch.sign(w[o]).to(torch.float64) * m  # centre output pixel sees every tap once
    ih.check(len(ih.layers) - 1, a)
    with deterministic_cpu():
        acc = lay.accumulate(a)[0, o, 1, 1]
    want = m * lay.weight_l1 + int(lay.bias[o])
    assert abs(want) >= 1 << 52
    assert int(acc) == want


# --- (e) the digest catches what the entropy decoder or the synthesis gets wrong ------------------------------


def test_corrupted_reconstruction_on_the_decoder_raises_integrity_error(monkeypatch: pytest.MonkeyPatch) -> None:
    x = tiny_features("dinov2-cls")[0]
    msg = encode_features(x, "dinov2-cls", "hyperprior", 3)
    decode_features(msg)
    monkeypatch.setattr(FeatureHyperprior, "synthesize",
                        lambda self, y_hat: torch.full((1, 1, *(16 * s for s in y_hat.shape[-2:])), 0.5,
                                                       dtype=torch.float64))
    with pytest.raises(IntegrityError, match="does not match the encoder's digest"):
        decode_features(msg)


def test_the_encoder_digest_does_not_come_from_entropy_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug shared by both sides' entropy decoding (here: y symbols off by 2) must not go unnoticed, so the
    encoder's digest is of its own quantized latents; it never entropy-decodes."""
    x = tiny_features("llama3-csr")[0]
    good = encode_features(x, "llama3-csr", "hyperprior", 5)

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the encoder entropy-decoded")

    with monkeypatch.context() as m:
        m.setattr(GaussianConditional, "decompress", refuse)
        m.setattr(EntropyBottleneck, "decompress", refuse)
        again = encode_features(x, "llama3-csr", "hyperprior", 5)
    assert again.payload == good.payload and again.decoded_digest == good.decoded_digest

    gc_decompress = GaussianConditional.decompress

    def off_by_two(self, strings, indexes, dtype=torch.float, means=None):  # type: ignore[no-untyped-def]
        out = gc_decompress(self, strings, indexes, dtype, means)
        out[..., 0, 0] += 2  # every channel's top-left symbol
        return out

    monkeypatch.setattr(GaussianConditional, "decompress", off_by_two)
    msg = encode_features(x, "llama3-csr", "hyperprior", 5)  # encoded with the bug present
    with pytest.raises(IntegrityError):
        decode_features(msg)


# --- fixed tables, no float maths at load, payload version -------------------------------------------------------


def test_loading_never_rebuilds_cdf_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("CDF tables rebuilt from float maths at load time")

    for cls in (EntropyBottleneck, GaussianConditional):
        monkeypatch.setattr(cls, "update", refuse)
    monkeypatch.setattr(GaussianConditional, "update_scale_table", refuse)
    ckpt._gaussian_tables.cache_clear()
    try:
        model = _model("llama3-csr", 2)
    finally:
        ckpt._gaussian_tables.cache_clear()
    assert model.gaussian_conditional._quantized_cdf.shape[0] == 64
    assert model.entropy_bottleneck._quantized_cdf.shape[0] == model.N


def test_corrupt_gaussian_tables_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blob = bytearray(ckpt.GAUSSIAN_TABLES.read_bytes())
    blob[len(blob) // 2] ^= 1
    bad = tmp_path / "gaussian_conditional.safetensors"
    bad.write_bytes(bytes(blob))
    monkeypatch.setattr(ckpt, "GAUSSIAN_TABLES", bad)
    ckpt._gaussian_tables.cache_clear()
    try:
        with pytest.raises(CheckpointError, match=r"Gaussian-conditional tables .* are corrupt"):
            _model("dinov2-cls")
    finally:
        ckpt._gaussian_tables.cache_clear()


def test_version_1_payloads_are_refused_with_a_clear_message() -> None:
    msg = encode_features(tiny_features("sd3-tti")[0], "sd3-tti", "hyperprior", 2)
    assert msg.payload[0] == 2
    with pytest.raises(BitstreamError, match="version 1 was coded with the float hyper-synthesis"):
        unpack_payload(b"\x01" + msg.payload[1:], lambda tile: 1)
