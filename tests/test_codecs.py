"""Codec round trips on the paper's five feature shapes, rate monotonicity, raw exactness, and
bounds on the reconstruction error that a wrong decode cannot meet."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

from splitfc.common.bitstream import bitstream_stats, decode_features, encode_features, parse_bitstream
from splitfc.common.codecs import CODECS, FrameCodec, get_codec
from splitfc.common.codecs.raw import RawCodec
from splitfc.common.errors import CodecUnavailableError, SplitfcError
from splitfc.common.preprocess import FramePlan, pack_frame
from splitfc.common.specs import SPLITS, TruncationColumn, get_split

PAPER_SHAPES = {
    "dinov2-cls": (257, 1536),
    "dinov2-seg": (2, 1370, 1536),
    "dinov2-dpt": (2, 4, 1611, 1536),
    "llama3-csr": (93, 4096),
    "sd3-tti": (16, 128, 128),
}
# Same layouts with fewer tokens, for the five-QP sweeps (the paper-size sweep is `make test-full`).
SWEEP_SHAPES = {
    "dinov2-cls": (257, 1536),
    "dinov2-seg": (2, 137, 1536),
    "dinov2-dpt": (2, 4, 41, 1536),
    "llama3-csr": (93, 4096),
    "sd3-tti": (16, 128, 128),
}
QP_CODECS = [name for name, cls in CODECS.items() if cls.rate_name == "qp"]
LOSSY_CODECS = [*QP_CODECS, "hyperprior"]


def _require(codec: str) -> None:
    reason = CODECS[codec].unavailable_reason()
    if reason is not None:
        pytest.skip(f"{codec}: {reason}")


def _check_round_trip(x: np.ndarray, split: str, codec: str, rate: int) -> float:
    msg = parse_bitstream(encode_features(x, split, codec, rate).SerializeToString())
    y = decode_features(msg)
    assert y.shape == x.shape and y.dtype == x.dtype
    spec = get_split(split)
    column = CODECS[codec].truncation or TruncationColumn.VTM
    low = min(r[0] for r in spec.ranges(column))
    high = max(r[1] for r in spec.ranges(column))
    assert np.all(np.isfinite(y)) and y.min() >= low - 1e-3 and y.max() <= high + 1e-3
    return bitstream_stats(msg).bpfp


@pytest.mark.parametrize("split", list(PAPER_SHAPES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_raw_is_bit_exact_on_paper_shapes(split: str, dtype: type, make_features) -> None:
    x = make_features(PAPER_SHAPES[split], seed=3).astype(dtype)
    msg = encode_features(x, split, "raw", 0)
    y = decode_features(parse_bitstream(msg.SerializeToString()))
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y.view(np.uint8), x.view(np.uint8))
    assert bitstream_stats(msg).bpfp == (32.0 if dtype == np.float32 else 16.0)


@pytest.mark.parametrize(("store", "bpfp"), [("float16", 16.0), ("bfloat16", 16.0)])
def test_raw_half_precision_storage(store: str, bpfp: float, make_features) -> None:
    x = make_features((257, 1536), seed=2)
    msg = encode_features(x, "dinov2-cls", RawCodec(store_dtype=store), 0)
    y = decode_features(msg)
    assert y.dtype == np.float32 and bitstream_stats(msg).bpfp == bpfp
    np.testing.assert_allclose(y, x, rtol=1e-2, atol=1e-2)


def test_raw_zstd_is_lossless_and_smaller_on_redundant_data() -> None:
    x = np.repeat(np.linspace(-3, 3, 1536, dtype=np.float32)[None], 257, axis=0)
    msg = encode_features(x, "dinov2-cls", RawCodec(zstd_level=3), 0)
    np.testing.assert_array_equal(decode_features(msg), x)
    assert bitstream_stats(msg).bpfp < 32.0


@pytest.mark.parametrize("split", list(PAPER_SHAPES))
@pytest.mark.parametrize("codec", QP_CODECS)
def test_qp_codecs_round_trip_paper_shapes(codec: str, split: str, make_features) -> None:
    _require(codec)
    x = make_features(PAPER_SHAPES[split], seed=3)
    assert _check_round_trip(x, split, codec, 42) > 0


@pytest.mark.parametrize("split", list(SWEEP_SHAPES))
@pytest.mark.parametrize("codec", QP_CODECS)
def test_bpfp_falls_strictly_as_qp_rises(codec: str, split: str, make_features) -> None:
    _require(codec)
    x = make_features(SWEEP_SHAPES[split], seed=4)
    rates = [_check_round_trip(x, split, codec, qp) for qp in CODECS[codec].rates]
    assert all(a > b for a, b in itertools.pairwise(rates)), rates


@pytest.mark.paper_full
@pytest.mark.parametrize("split", list(PAPER_SHAPES))
@pytest.mark.parametrize("codec", QP_CODECS)
def test_bpfp_falls_strictly_on_paper_shapes(codec: str, split: str, make_features) -> None:
    _require(codec)
    x = make_features(PAPER_SHAPES[split], seed=3)
    rates = [_check_round_trip(x, split, codec, qp) for qp in CODECS[codec].rates]
    assert all(a > b for a, b in itertools.pairwise(rates)), rates


@pytest.mark.parametrize("codec", QP_CODECS)
def test_odd_frame_sizes_are_padded_and_cropped(codec: str, make_features) -> None:
    _require(codec)
    x = make_features((13, 37), seed=5)
    _check_round_trip(x, "dinov2-cls", codec, 27)


@pytest.mark.parametrize("codec", QP_CODECS)
def test_corrupt_payload_is_a_clean_error(codec: str, make_features) -> None:
    _require(codec)
    msg = encode_features(make_features((64, 128), seed=6), "dinov2-cls", codec, 32)
    msg.payload = bytes(b ^ 0x5A for b in msg.payload)
    import zlib

    msg.payload_crc32 = zlib.crc32(msg.payload)  # get past the CRC: the decoder itself must fail cleanly
    try:
        y = decode_features(msg)
    except SplitfcError:
        return
    assert y.shape == (64, 128)  # a decoder may conceal errors, but never returns a wrong shape


def test_qp_out_of_range_is_refused(make_features) -> None:
    with pytest.raises(ValueError, match="qp"):
        encode_features(make_features((8, 16)), "dinov2-cls", "hevc", 99)


def test_vtm_missing_binaries_say_what_to_install(monkeypatch, tmp_path) -> None:
    from splitfc.common import settings

    monkeypatch.setenv("SPLITFC_VTM_DIR", str(tmp_path))
    settings.codec_settings.cache_clear()
    try:
        reason = CODECS["vtm"].unavailable_reason()
        assert reason is not None
        assert "EncoderAppStatic" in reason and "SPLITFC_VTM_DIR" in reason and str(tmp_path) in reason
        with pytest.raises(CodecUnavailableError, match="EncoderAppStatic"):
            encode_features(np.zeros((8, 16), np.float32), "dinov2-cls", get_codec("vtm"), 32)
    finally:
        settings.codec_settings.cache_clear()


def test_vtm_runs_fake_binaries_without_a_shell(monkeypatch, tmp_path) -> None:
    """The VTM wrapper's file protocol, exercised with stand-in encoder/decoder scripts."""
    from splitfc.common import settings

    enc = tmp_path / "EncoderAppStatic"
    dec = tmp_path / "DecoderAppStatic"
    (tmp_path / "encoder_intra_vtm.cfg").write_text("# stand-in\n")
    # The stand-in "codec" stores the 4:0:0 yuv as the bitstream; the decoder copies it back.
    enc.write_text(
        "#!/usr/bin/env python3\nimport sys\na=sys.argv\n"
        "src=a[a.index('-i')+1]; dst=a[a.index('-b')+1]\n"
        "assert '--InputChromaFormat=400' in a and '--ConformanceWindowMode=1' in a\n"
        "open(dst,'wb').write(open(src,'rb').read())\n"
    )
    dec.write_text(
        "#!/usr/bin/env python3\nimport sys\na=sys.argv\n"
        "open(a[a.index('-o')+1],'wb').write(open(a[a.index('-b')+1],'rb').read())\n"
    )
    enc.chmod(0o755)
    dec.chmod(0o755)
    monkeypatch.setenv("SPLITFC_VTM_DIR", str(tmp_path))
    settings.codec_settings.cache_clear()
    try:
        x = np.linspace(-30, 30, 257 * 24, dtype=np.float32).reshape(257, 24)
        msg = encode_features(x, "dinov2-cls", "vtm", 32)
        assert len(msg.payload) == 257 * 24 * 2
        y = decode_features(msg)
        step = 40 / 1023
        np.testing.assert_allclose(y, np.clip(x, -20, 20), atol=step / 2 + 1e-5)
    finally:
        settings.codec_settings.cache_clear()


@pytest.mark.parametrize("split", list(PAPER_SHAPES))
def test_hyperprior_round_trips_paper_shapes(split: str, make_features) -> None:
    """The learned codec tiles paper-size frames (e.g. 3222x6144 for Dpt) and crops them back."""
    _require("hyperprior")
    x = make_features(PAPER_SHAPES[split], seed=3)
    assert _check_round_trip(x, split, "hyperprior", 1) > 0


def test_vvenc_can_decode_with_vtm(monkeypatch, tmp_path) -> None:
    """SPLITFC_VVC_DECODER=vtm routes vvenc payloads to DecoderAppStatic (stand-in here) and crops."""
    _require("vvenc")
    from splitfc.common import settings

    h, w = 40, 48  # packed into a 40x48 picture (multiples of 8, at least 32)
    plane = (np.arange(h * w, dtype="<u2") % 1024).reshape(h, w)
    (tmp_path / "plane.yuv").write_bytes(plane.tobytes() + np.zeros(h * w // 2, "<u2").tobytes())
    dec = tmp_path / "DecoderAppStatic"
    dec.write_text(
        "#!/usr/bin/env python3\nimport sys, shutil\na=sys.argv\n"
        f"shutil.copy({str(tmp_path / 'plane.yuv')!r}, a[a.index('-o')+1])\n"
    )
    dec.chmod(0o755)
    (tmp_path / "EncoderAppStatic").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "EncoderAppStatic").chmod(0o755)
    (tmp_path / "encoder_intra_vtm.cfg").write_text("")
    monkeypatch.setenv("SPLITFC_VTM_DIR", str(tmp_path))
    monkeypatch.setenv("SPLITFC_VVC_DECODER", "vtm")
    settings.codec_settings.cache_clear()
    try:
        frame = get_codec("vvenc").decode_frame(b"not decoded by ffmpeg", 37, 45, 32, {})
        np.testing.assert_array_equal(frame, plane[:37, :45])
    finally:
        settings.codec_settings.cache_clear()


# --- Reconstruction error bounds --------------------------------------------------------------------
#
# A decode that returns the wrong picture must fail a round-trip test, not just a finite-and-in-range
# check. The bound compares the error of the reconstruction against the original features with the
# error of pre-processing alone (truncation + 10-bit quantization, ``FramePlan.to_frame``/``from_frame``)
# plus the coding error a codec may add at its rate:
#
#     RMS(y - x) <= RMS(pre - x) + sqrt(budget * mean(step**2))
#
# over the whole packed frame and over every band of BAND_ROWS rows of it (a wrong decode is often
# local: ffmpeg's VVC race garbled rows 124-135 of a 136-row picture). ``step`` is the feature value of
# one 10-bit level (per range for Dpt's per-layer ranges) and ``budget`` the coding error allowed, in
# levels squared per sample. By the triangle inequality every decode whose own error RMS(y - pre) is
# within budget passes; in MSE terms mse <= (1 + t) * mse_pre + (1 + 1/t) * budget * mean(step**2) for
# any t > 0 (t = 1: mse <= 2 mse_pre + 2 budget step**2).
#
# Budgets, from measurements on the four held-out tiny-preset samples of every split (tests' fast
# presets and the medium defaults; VTM-23.3 too), rates 22..42 / qualities 1..5:
# * QP codecs (vvenc, hevc, vtm): the coding error of an H.26x quantizer scales with Qstep(QP)**2
#   (Qstep = 2**((QP-4)/6) at 8 bits, 4x that in 10-bit levels). Measured: at most 0.102 Qstep**2 over a
#   frame and 0.255 Qstep**2 in an 8-row band (x265 ultrafast). Budget 0.25 / 1.0 Qstep**2: margins
#   x2.4 / x3.9.
# * hyperprior: no quantizer step to scale with; each split has its own checkpoints. The shipped tiny
#   checkpoints reconstruct little better than a constant frame (their error at quality 1 is that of a
#   mid-grey frame), so the budget is 1.5x the largest error measured per split (at quality 1) and it
#   catches only gross corruption (a zero frame; garbage rows on Dpt, CSR and TTI).
BAND_ROWS = 8
QP_BUDGET = (0.25, 1.0)
"""Coding error allowed to the QP codecs in Qstep(QP)**2 per sample: (whole frame, any band)."""
HYPERPRIOR_BUDGET = {
    # split: (whole frame, any band) in levels**2; measured maxima 102k/114k, 101k/119k, 31k/35k, 18.5k/26.5k,
    # 5.7k/6.4k
    "dinov2-cls": (153_000.0, 171_000.0),
    "dinov2-seg": (151_000.0, 179_000.0),
    "dinov2-dpt": (47_000.0, 53_000.0),
    "llama3-csr": (28_000.0, 40_000.0),
    "sd3-tti": (8_500.0, 9_600.0),
}
RATE_TIE = 0.005
"""Errors of neighbouring rate points within this fraction count as ties: the hyperprior's tiny SD3 TTI
checkpoints reconstruct within 0.2% of each other at qualities 3-5, sometimes the wrong way round."""
TINY_SAMPLES = (0, 1)


def qstep(qp: int, bit_depth: int = 10) -> float:
    """The H.265/H.266 quantizer step at ``qp`` in ``bit_depth``-bit sample levels."""
    return 2 ** ((qp - 4) / 6) * 2 ** (bit_depth - 8)


def coding_budget(codec: str, split: str, rate: int) -> tuple[float, float]:
    """Mean squared coding error allowed per sample in 10-bit levels: (whole frame, any band)."""
    if CODECS[codec].rate_name == "qp":
        q2 = qstep(rate) ** 2
        return QP_BUDGET[0] * q2, QP_BUDGET[1] * q2
    if codec == "hyperprior":
        return HYPERPRIOR_BUDGET[split]
    raise ValueError(f"no error budget for codec {codec}")


@dataclass(frozen=True)
class ReconstructionError:
    mse: float
    """MSE of the reconstruction against the original features."""
    mse_pre: float
    """MSE of pre-processing alone (truncation + quantization) against the original features."""
    worst: float
    """Largest implied coding error / budget over the frame and its bands: above 1 fails."""
    where: str
    """The region with the largest ratio."""


def _step_squared(plan: FramePlan) -> np.ndarray:
    """Squared feature value of one quantization level, per element of the packed frame."""
    levels = (1 << plan.bit_depth) - 1
    steps = np.array([((high - low) / levels) ** 2 for low, high in plan.ranges])
    if len(steps) == 1:
        per_element = np.broadcast_to(steps[0], plan.shape)
    else:
        shape = [1] * len(plan.shape)
        shape[plan.spec.group_axis] = len(steps)
        per_element = np.broadcast_to(steps.reshape(shape), plan.shape)
    return pack_frame(per_element, plan.spec.packing)


def reconstruction_error(codec: str, split: str, x: np.ndarray, y: np.ndarray, rate: int) -> ReconstructionError:
    """How the error of reconstruction ``y`` of ``x`` (``codec`` at ``rate``) compares with its bound."""
    spec = get_split(split)
    codec_obj = get_codec(codec)
    assert isinstance(codec_obj, FrameCodec)
    plan = codec_obj.plan(spec, x.shape)
    x64 = x.astype(np.float64)
    pre = plan.from_frame(plan.to_frame(x)).astype(np.float64)
    squares = [
        pack_frame((y.astype(np.float64) - x64) ** 2, spec.packing),
        pack_frame((pre - x64) ** 2, spec.packing),
        _step_squared(plan),
    ]
    rows = [a.sum(axis=1) for a in squares]  # per packed row
    height, width = squares[0].shape
    starts = np.arange(0, height, BAND_ROWS)
    counts = np.minimum(starts + BAND_ROWS, height) - starts
    band_err, band_pre, band_step2 = (np.add.reduceat(r, starts) / (counts * width) for r in rows)
    frame_budget, band_budget = coding_budget(codec, split, rate)
    err, err_pre, step2 = (float(r.sum()) / (height * width) for r in rows)

    def ratio(e: float, p: float, s2: float, budget: float) -> float:
        # coding error (levels**2) implied by the triangle inequality, relative to its budget
        return max(0.0, math.sqrt(e) - math.sqrt(p)) ** 2 / s2 / budget

    worst, where = ratio(err, err_pre, step2, frame_budget), "the whole frame"
    for start, e, p, s2 in zip(starts, band_err, band_pre, band_step2, strict=True):
        r = ratio(float(e), float(p), float(s2), band_budget)
        if r > worst:
            worst, where = r, f"rows {start}-{min(start + BAND_ROWS, height) - 1}"
    return ReconstructionError(err, err_pre, worst, where)


def check_reconstruction(codec: str, split: str, x: np.ndarray, y: np.ndarray, rate: int) -> float:
    """Assert that ``y`` is within the error bound for ``codec`` at ``rate``; return its MSE against ``x``."""
    r = reconstruction_error(codec, split, x, y, rate)
    assert r.worst <= 1.0, (
        f"{codec} {split} {CODECS[codec].rate_name} {rate}: the reconstruction error in {r.where} is "
        f"{r.worst:.2f}x its bound (MSE {r.mse:.4g}, pre-processing alone {r.mse_pre:.4g})"
    )
    return r.mse


def check_error_grows_as_rate_falls(codec: str, errors: dict[int, float]) -> None:
    """Error must not fall as the rate falls (QP up, quality down); neighbours within RATE_TIE are ties."""
    rates = sorted(errors, reverse=CODECS[codec].rate_name == "quality")  # best quality first
    for better, worse in itertools.pairwise(rates):
        assert errors[worse] >= errors[better] * (1 - RATE_TIE), (
            f"{codec}: MSE {errors[worse]:.5g} at {worse} is below {errors[better]:.5g} at {better}: {errors}"
        )


@cache
def tiny_features(split: str, n: int = 2) -> tuple[np.ndarray, ...]:
    """Features of the tiny preset on held-out samples (as in test_hyperprior)."""
    from splitfc.common.models import get_split_model, tiny_samples

    model = get_split_model(split, "tiny")
    return tuple(np.asarray(model.head(s.inputs), dtype=np.float32) for s in tiny_samples(split, n))


@cache
def _tiny_decode(codec: str, split: str, sample: int, rate: int) -> np.ndarray:
    """The decoded 10-bit frame of a tiny sample (integrity digest verified)."""
    codec_obj = get_codec(codec)
    assert isinstance(codec_obj, FrameCodec)
    spec = get_split(split)
    coded = codec_obj.encode(tiny_features(split)[sample], spec, rate)
    decoded = codec_obj.decode_checked_frame(coded, rate, spec)
    decoded.flags.writeable = False
    return decoded


def _features_of(codec: str, split: str, sample: int, frame: np.ndarray) -> np.ndarray:
    x = tiny_features(split)[sample]
    codec_obj = get_codec(codec)
    assert isinstance(codec_obj, FrameCodec)
    return codec_obj.plan(get_split(split), x.shape).from_frame(frame)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("codec", LOSSY_CODECS)
def test_reconstruction_error_is_bounded_and_grows_as_rate_falls(codec: str, split: str) -> None:
    """Tiny-preset features of two held-out samples, every rate point: bounded error, monotone in rate."""
    _require(codec)
    for sample in TINY_SAMPLES[:1] if codec == "vtm" else TINY_SAMPLES:  # a VTM encode takes seconds
        x = tiny_features(split)[sample]
        errors = {
            rate: check_reconstruction(codec, split, x, _features_of(codec, split, sample, decoded), rate)
            for rate in CODECS[codec].rates
            for decoded in [_tiny_decode(codec, split, sample, rate)]
        }
        check_error_grows_as_rate_falls(codec, errors)


def _garbage_from_second_ctu_row(frame: np.ndarray) -> np.ndarray:
    """Random levels from the second 128-row CTU row on (the VVC race), or the second half of a short frame."""
    bad = frame.copy()
    start = 128 if frame.shape[0] > 128 else frame.shape[0] // 2
    bad[start:] = np.random.default_rng(0).integers(0, 1024, bad[start:].shape, dtype=np.uint16)
    return bad


def _rows_swapped(frame: np.ndarray) -> np.ndarray:
    bad = frame.copy()
    bad[[0, -1]] = frame[[-1, 0]]
    return bad


CORRUPTIONS = {
    "zero frame": np.zeros_like,
    "mid-grey frame": lambda f: np.full_like(f, 512),
    "garbage from the second CTU row": _garbage_from_second_ctu_row,
    "first and last rows swapped": _rows_swapped,
    "transposed": lambda f: np.ascontiguousarray(f.T).reshape(f.shape),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("codec", QP_CODECS)
def test_error_bound_fails_corrupt_decodes(codec: str, split: str, corruption: str) -> None:
    """At QP 22 every corruption breaks the bound: measured on four samples, by x1.5 (the swapped rows
    of TTI's tiled channel maps, which look alike) to x1000 (a zero frame). The bound grows with
    Qstep**2, so at QP 42 only a zero frame (x7.8) still fails on every split: a mid-grey frame is
    then within the codecs' own error on these tiny frames."""
    _require(codec)
    rate = CODECS[codec].rates[0]
    x, frame = tiny_features(split)[0], _tiny_decode(codec, split, 0, rate)
    check_reconstruction(codec, split, x, _features_of(codec, split, 0, frame), rate)
    bad = CORRUPTIONS[corruption](frame)
    assert not np.array_equal(bad, frame)
    with pytest.raises(AssertionError, match="its bound"):
        check_reconstruction(codec, split, x, _features_of(codec, split, 0, bad), rate)


@pytest.mark.parametrize("split", list(SPLITS))
def test_error_bound_fails_a_zero_frame_from_the_hyperprior(split: str) -> None:
    _require("hyperprior")
    x, frame = tiny_features(split)[0], _tiny_decode("hyperprior", split, 0, 5)
    check_reconstruction("hyperprior", split, x, _features_of("hyperprior", split, 0, frame), 5)
    with pytest.raises(AssertionError, match="its bound"):
        check_reconstruction("hyperprior", split, x, _features_of("hyperprior", split, 0, np.zeros_like(frame)), 5)


def test_vtm_binaries_without_the_static_suffix_are_found(monkeypatch, tmp_path) -> None:
    from splitfc.common import settings
    from splitfc.common.codecs.vtm import vtm_tools

    for name in ("EncoderApp", "DecoderApp"):
        (tmp_path / name).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / name).chmod(0o755)
    (tmp_path / "encoder_intra_vtm.cfg").write_text("")
    monkeypatch.setenv("SPLITFC_VTM_DIR", str(tmp_path))
    settings.codec_settings.cache_clear()
    try:
        assert vtm_tools()[:2] == (tmp_path / "EncoderApp", tmp_path / "DecoderApp")
        (tmp_path / "DecoderAppStatic").write_text("")
        assert vtm_tools()[1] == tmp_path / "DecoderAppStatic"  # the Static build is preferred
    finally:
        settings.codec_settings.cache_clear()
