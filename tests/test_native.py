"""The feature-native codec: bounded error, monotonic rate knob, bad input, determinism."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from splitfc.common.bitstream import bitstream_stats, decode_features, encode_features, parse_bitstream
from splitfc.common.codecs import get_codec
from splitfc.common.codecs import native as nat
from splitfc.common.codecs import native_entropy as ne
from splitfc.common.codecs import native_transform as nt
from splitfc.common.codecs.native import NativeCodec
from splitfc.common.errors import BitstreamError, IntegrityError, SplitfcError, TooManyElementsError
from splitfc.common.settings import native_transform_settings
from splitfc.common.specs import get_split
from splitfc.v1 import bitstream_pb2 as pb

SHAPES = {"dinov2-cls": (65, 128), "dinov2-seg": (2, 65, 128), "dinov2-dpt": (2, 4, 81, 128),
          "llama3-csr": (24, 128), "sd3-tti": (16, 16, 16)}


@pytest.fixture(autouse=True)
def _no_transform(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Channels as components (``SPLITFC_NATIVE_TRANSFORM=none``) unless a test uses `_shipped_transforms`."""
    monkeypatch.delenv("SPLITFC_NATIVE_TRANSFORM_DIR", raising=False)
    monkeypatch.setenv("SPLITFC_NATIVE_TRANSFORM", "none")
    native_transform_settings.cache_clear()
    nt.clear_cache()
    yield
    native_transform_settings.cache_clear()
    nt.clear_cache()


def _shipped_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLITFC_NATIVE_TRANSFORM", raising=False)
    native_transform_settings.cache_clear()
    nt.clear_cache()


def massive(shape: tuple[int, ...], seed: int = 0, channel_axis: int = -1) -> np.ndarray:
    """Student-t features with a few massive-activation channels (offsets of -300, one channel x50)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, shape).astype(np.float32)
    x = np.moveaxis(x, channel_axis, -1)
    x[..., [1, 7]] -= 300.0
    x[..., 3] *= 50.0
    return np.ascontiguousarray(np.moveaxis(x, -1, channel_axis))


def _assert_monotonic(results: list[tuple[float, float]]) -> None:
    """(bits, MSE) per rate in `NativeCodec.rates` order: bits fall (strictly up to step 42; beyond, a
    tiny tensor's payload may stay at its floor of one 32-bit ANS word), MSE grows."""
    strict = sum(r <= 42 for r in NativeCodec.rates)
    assert all(a[0] > b[0] for a, b in itertools.pairwise(results[:strict])), results
    assert all(a[0] >= b[0] for a, b in itertools.pairwise(results)), results
    assert all(a[1] < b[1] for a, b in itertools.pairwise(results)), results


def _round_trip(x: np.ndarray, split: str, rate: int) -> tuple[np.ndarray, float]:
    msg = parse_bitstream(encode_features(x, split, "native", rate).SerializeToString())
    y = decode_features(msg)
    assert y.shape == x.shape and y.dtype == x.dtype
    return y, bitstream_stats(msg).bpfp


@pytest.mark.parametrize("split", list(SHAPES))
def test_error_is_within_half_a_step_and_rate_is_monotonic(split: str) -> None:
    """|error| <= one step + the mean's grid error everywhere; BPFP falls, MSE grows as rate rises."""
    axis = 0 if split == "sd3-tti" else -1
    x = massive(SHAPES[split], seed=1, channel_axis=axis)
    spec = get_split(split)
    results = []
    for rate in NativeCodec.rates:
        y, bpfp = _round_trip(x, split, rate)
        moved = np.moveaxis(x.astype(np.float64), axis, 0).reshape(x.shape[axis], -1)
        rms = np.sqrt(np.mean((moved - moved.mean(axis=1, keepdims=True)) ** 2))
        step = rms * 2 ** ((rate - 32) / 6)
        bound = nat.MAX_ZERO_THRESHOLD * step + step / 16 + 1e-3  # rounded to 0 below 1 step, else within 3/4
        assert np.max(np.abs(y.astype(np.float64) - x)) <= bound, (split, rate)
        results.append((bpfp, float(np.mean((y.astype(np.float64) - x) ** 2))))
    assert spec.id == split
    _assert_monotonic(results)


def test_wrong_decoders_fail_the_error_bound() -> None:
    """A flat frame (the channel means alone) or a swapped channel/token order is far outside the bound."""
    x = massive((65, 128), seed=2)
    y, _ = _round_trip(x, "dinov2-cls", 22)
    err = np.max(np.abs(y - x))
    flat = np.broadcast_to(y.mean(axis=0, keepdims=True), y.shape)
    assert np.max(np.abs(flat - x)) > 10 * err
    swapped = y[::-1]  # tokens in the wrong order
    assert np.max(np.abs(swapped - x)) > 10 * err
    transposed = np.ascontiguousarray(y.T).reshape(y.shape)
    assert np.max(np.abs(transposed - x)) > 10 * err


def test_massive_channels_cost_no_more_than_ordinary_ones() -> None:
    """Mean removal: adding -300 offsets to channels changes neither the rate nor the error much."""
    rng = np.random.default_rng(3)
    x = rng.standard_t(4, (65, 128)).astype(np.float32)
    shifted = x.copy()
    shifted[:, [1, 7, 20]] -= 300.0
    _, plain = _round_trip(x, "dinov2-cls", 32)
    _, offset = _round_trip(shifted, "dinov2-cls", 32)
    assert offset < plain * 1.1 + 0.05, (plain, offset)


def _assert_refused(msg: pb.FeatureBitstream, payloads: Iterable[bytes]) -> None:
    """Each of ``payloads`` in place of ``msg``'s (with a matching CRC, so the codec itself must refuse it)
    raises `SplitfcError` on decoding."""
    for payload in payloads:
        bad = type(msg)()
        bad.CopyFrom(msg)
        bad.payload = payload
        bad.payload_crc32 = zlib.crc32(payload)
        with pytest.raises(SplitfcError):
            decode_features(bad)


def test_corrupt_payloads_are_clean_errors() -> None:
    msg = encode_features(massive((65, 128)), "dinov2-cls", "native", 32)
    _assert_refused(msg, (msg.payload[:5], msg.payload[:20], bytes(b ^ 0x5A for b in msg.payload), b"\x01" * 40))
    bad = type(msg)()
    bad.CopyFrom(msg)
    bad.codec.extra["native"] = "v9"
    with pytest.raises(BitstreamError, match="version"):
        decode_features(bad)


def test_step_changed_in_payload_is_an_integrity_error() -> None:
    """A payload whose step (or a symbol) differs from the encoder's decodes to other features: refused."""
    msg = encode_features(massive((65, 128)), "dinov2-cls", "native", 32)
    payload = bytearray(msg.payload)
    payload[9] ^= 0x01  # lowest mantissa bit of the float32 step
    msg.payload = bytes(payload)
    msg.payload_crc32 = zlib.crc32(msg.payload)
    with pytest.raises(IntegrityError):
        decode_features(msg)


def test_huge_declared_shape_is_refused_before_decoding() -> None:
    msg = encode_features(np.zeros((65, 128), np.float32), "dinov2-cls", "native", 32)
    del msg.tensors[0].shape[:]
    msg.tensors[0].shape.extend([1 << 20, 4096])
    with pytest.raises(TooManyElementsError, match="native"):
        decode_features(msg)


def test_wrong_channel_count_and_rate_are_refused() -> None:
    msg = encode_features(massive((65, 128)), "dinov2-cls", "native", 32)
    del msg.tensors[0].shape[:]
    msg.tensors[0].shape.extend([130, 64])
    with pytest.raises(BitstreamError, match="channels"):
        decode_features(msg)
    with pytest.raises(ValueError, match="step"):
        encode_features(massive((65, 128)), "dinov2-cls", "native", 64)
    with pytest.raises(SplitfcError):
        encode_features(np.full((8, 16), np.nan, np.float32), "dinov2-cls", "native", 32)


def test_flat_and_zero_inputs_round_trip() -> None:
    for x in (np.zeros((65, 128), np.float32), np.full((65, 128), -7.25, np.float32)):
        y, _ = _round_trip(x, "dinov2-cls", 32)
        np.testing.assert_allclose(y, x, atol=1e-3)


_DECODE_CHILD = """
import sys, hashlib
from splitfc.common.bitstream import decode_features, parse_bitstream
msg = parse_bitstream(open(sys.argv[1], 'rb').read())
print(hashlib.sha256(decode_features(msg).tobytes()).hexdigest())
"""


@pytest.mark.parametrize("env", [
    {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
])
def test_decode_is_identical_in_another_process(env: dict[str, str], tmp_path) -> None:
    """Another process, 1 or 2 threads, MKL's compatible code path: the same bytes (and the digest holds)."""
    x = massive((2, 4, 81, 128), seed=4)
    msg = encode_features(x, "dinov2-dpt", "native", 27)
    here = decode_features(msg)
    path = tmp_path / "b.bin"
    path.write_bytes(msg.SerializeToString())
    import hashlib

    out = subprocess.run([sys.executable, "-c", _DECODE_CHILD, str(path)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()


def test_registered_and_listed() -> None:
    codec = get_codec("native")
    assert isinstance(codec, NativeCodec) and codec.unavailable_reason() is None


def test_payload_bound_is_below_its_cheapest_coding() -> None:
    """A flat tensor at the coarsest step is the fewest bits native spends; the payload bound sits below it."""
    from splitfc.common.bitstream import validate_bitstream

    x = np.zeros((4096, 4096), np.float32)
    msg = encode_features(x, "llama3-csr", "native", NativeCodec.rate_bounds[1])
    flat = len(msg.payload) * 8 / x.size
    assert 0 < NativeCodec.min_payload_bits_per_element < flat, flat
    validate_bitstream(msg)


# ---------------------------------------------------------------------------------------------- v2 parts

TABLES_SHA256 = "bfea2d997af32600a552af7f89b416e7ea550f6be3c8ce8fed30bc94440166a1"
"""Digest of every entropy table (half-width and float64 probabilities): the decoder's tables must be
these bits on every machine (they are built with IEEE +, *, /, sqrt only)."""


def test_entropy_tables_are_pinned() -> None:
    import hashlib

    h = hashlib.sha256()
    for j in range(1, ne.CLASSES):
        for t in range(len(ne.TILT_EIGHTHS)):
            tab = ne.table(j, t)
            h.update(np.int64(tab.half).tobytes())
            h.update(tab.probabilities.astype("<f8").tobytes())
            assert abs(tab.probabilities.sum() - 1.0) < 1e-9 and tab.probabilities.min() > 0
    assert h.hexdigest() == TABLES_SHA256
    with pytest.raises(BitstreamError):
        ne.table(ne.CLASSES, 0)


def test_symbol_coder_round_trips_escapes_and_classes() -> None:
    """Values far beyond a table's half-width (escapes, both signs) and several classes in one stream."""
    rng = np.random.default_rng(5)
    small = rng.integers(-2, 3, 500)
    wide = rng.laplace(0, 40, 300).astype(np.int64)
    wide[[3, 77]] = [(1 << 29), -(1 << 29)]
    writer = ne.SymbolWriter()
    writer.add(small, 10, 2)
    writer.add(wide, 3, 7)  # a narrow class: most of ``wide`` escapes
    data = writer.finish()
    reader = ne.SymbolReader(data)
    np.testing.assert_array_equal(reader.read(500, 10, 2), small)
    np.testing.assert_array_equal(reader.read(300, 3, 7), wide)
    reader.check_done()
    reader = ne.SymbolReader(data)
    reader.read(500, 10, 2)
    with pytest.raises(BitstreamError):  # stopping early: the stream is not at its end
        reader.check_done()


def test_entropy_coder_beats_zstd_byte_planes() -> None:
    """The scale-class ANS coder spends >= 20% fewer bits than v1's zstd byte planes at one quantization."""
    import zstandard

    x = massive((257, 256), seed=6)
    x *= np.exp(np.random.default_rng(6).normal(0, 1, 256)).astype(np.float32)  # channels of unequal scale
    spec = get_split("dinov2-cls")
    for rate in (27, 37):
        coded = NativeCodec().encode(x, spec, rate)
        _, _, step, *_ = nat.HEADER.unpack_from(coded.payload)
        y = np.ascontiguousarray(x.T, dtype=np.float64)
        dc = nat._dc(y, float(step))  # v1's quantizer: channel DC, then a plain dead zone
        scaled = y * (1.0 / float(step)) - (dc / nat.MEAN_GRID)[:, None]
        q = np.trunc(scaled + np.copysign(0.5 - nat.DEAD_ZONE, scaled)).astype(np.int64)
        zz = ((q << 1) ^ (q >> 63)).astype(np.uint64)
        width = int(zz.max()).bit_length() // 8 + 1
        planes = b"".join(((zz >> (8 * i)) & 0xFF).astype(np.uint8).tobytes() for i in range(width))
        zstd_bytes = len(zstandard.ZstdCompressor(level=3).compress(dc.astype("<i4").tobytes() + planes))
        assert len(coded.payload) < 0.8 * zstd_bytes, (rate, len(coded.payload), zstd_bytes)


def test_truncated_and_padded_payloads_are_clean_errors() -> None:
    msg = encode_features(massive((65, 128), seed=7), "dinov2-cls", "native", 32)
    _assert_refused(msg, (msg.payload[:-4], msg.payload[:-1], msg.payload + bytes(4),
                          msg.payload[:nat.HEADER.size] + bytes(range(256)) * 4))


def test_claimed_symbols_beyond_the_payload_are_refused() -> None:
    """A header whose classes claim far more symbol bits than the payload holds fails before decoding them."""
    x = massive((65, 128), seed=8)
    msg = encode_features(x, "dinov2-cls", "native", 32)
    writer = ne.SymbolWriter()
    writer.add(np.array([ne.CLASSES - 1] + [0] * 127), 40, 0)  # every component in the widest class
    header = bytearray(msg.payload[:nat.HEADER.size])
    header[22:24] = bytes([40, 0])  # class-index class and tilt
    header[24] = 0  # no DCs
    header[26] = 0  # no token transform
    header[17:21] = (128).to_bytes(4, "little")
    payload = bytes(header) + writer.finish()
    msg.payload = payload
    msg.payload_crc32 = zlib.crc32(payload)
    with pytest.raises(BitstreamError, match="too short"):
        decode_features(msg)


def test_shipped_transform_round_trip_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the tiny preset's shipped channel PCA: its id is in the payload, error stays within a step in
    RMS, the knob stays monotonic, and a decoder without the artefact names the id."""
    _shipped_transforms(monkeypatch)
    spec = get_split("dinov2-cls")
    transform = nt.find_native_transform("dinov2-cls", 128)
    assert transform is not None
    rng = np.random.default_rng(9)
    x = (rng.standard_t(5, (65, 128)) * np.sqrt(transform.variances)) @ transform.basis + transform.mean
    x = x.astype(np.float32)
    results = []
    for rate in NativeCodec.rates:
        msg = encode_features(x, "dinov2-cls", "native", rate)
        assert msg.payload[1:9] == transform.transform_id
        y = decode_features(msg)
        _, _, step, *_ = nat.HEADER.unpack_from(msg.payload)
        err = y.astype(np.float64) - x
        assert np.sqrt(np.mean(err ** 2)) <= 0.5 * step, rate
        results.append((len(msg.payload), float(np.mean(err ** 2))))
    _assert_monotonic(results)
    assert spec.id == "dinov2-cls"
    msg = encode_features(x, "dinov2-cls", "native", 32)
    payload = bytearray(msg.payload)
    payload[1:9] = bytes.fromhex("00112233445566ff")
    msg.payload = bytes(payload)
    msg.payload_crc32 = zlib.crc32(msg.payload)
    with pytest.raises(BitstreamError, match="00112233445566ff"):
        decode_features(msg)


def test_transform_saves_bits_on_correlated_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Features drawn from the shipped PCA's own statistics cost fewer bits with it than without."""
    transform = nt.find_native_transform("dinov2-seg", 128, honour_override=False)
    assert transform is not None
    rng = np.random.default_rng(10)
    x = (rng.normal(size=(2, 65, 128)) * np.sqrt(transform.variances)) @ transform.basis + transform.mean
    x = x.astype(np.float32)
    plain = len(encode_features(x, "dinov2-seg", "native", 32).payload)
    _shipped_transforms(monkeypatch)
    fitted = len(encode_features(x, "dinov2-seg", "native", 32).payload)
    assert fitted < 0.9 * plain, (plain, fitted)


def test_exact_product_bound_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integer coefficients whose basis product could pass 2**53 are refused, not rounded."""
    transform = nt.find_native_transform("dinov2-cls", 128, honour_override=False)
    assert transform is not None
    fine = np.zeros((128, 3), np.int64)
    fine[:, 0] = 1 << 40
    with pytest.raises(BitstreamError, match="2\\*\\*53"):
        nat._reconstruct(nat.Bands(1, 3, 0), [fine], np.zeros((1, 128), np.int64), np.float32(1.0), transform, 128)
    fine[:, 0] = 1 << 20
    out = nat._reconstruct(nat.Bands(1, 3, 0), [fine], np.zeros((1, 128), np.int64), np.float32(1.0), transform, 128)
    assert out.shape == (128, 3)


@pytest.mark.parametrize("env", [
    {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
])
def test_transform_decode_is_identical_in_another_process(
    env: dict[str, str], tmp_path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The basis and token-transform products (BLAS) give the same bytes in another process with 1 or 2
    threads."""
    _shipped_transforms(monkeypatch)
    transform = nt.find_native_transform("dinov2-dpt", 128)
    assert transform is not None
    x = (_token_correlated((2, 4, 81, 128), seed=11) / np.linspace(0.5, 3.0, 128) * np.sqrt(transform.variances)
         @ transform.basis + transform.mean).astype(np.float32)
    msg = encode_features(x, "dinov2-dpt", "native", 27)
    assert msg.payload[1:9] != nat.NO_TRANSFORM and msg.payload[nat.HEADER.size - 1] == nat.TOKEN_BLOCK
    here = decode_features(msg)
    path = tmp_path / "b.bin"
    path.write_bytes(msg.SerializeToString())
    import hashlib

    child_env = {k: v for k, v in os.environ.items() if k != "SPLITFC_NATIVE_TRANSFORM"}
    out = subprocess.run([sys.executable, "-c", _DECODE_CHILD, str(path)], env={**child_env, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()


def _token_correlated(shape: tuple[int, ...], seed: int, rho: float = 0.9) -> np.ndarray:
    """Features whose tokens (the innermost non-channel axis: the second-to-last here) follow an AR(1)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_t(5, shape)
    x = np.empty(shape)
    x[..., 0, :] = noise[..., 0, :]
    for t in range(1, shape[-2]):
        x[..., t, :] = rho * x[..., t - 1, :] + np.sqrt(1 - rho ** 2) * noise[..., t, :]
    return (x * np.linspace(0.5, 3.0, shape[-1])).astype(np.float32)


@pytest.mark.parametrize(("split", "shape"), [("dinov2-cls", (65, 32)), ("dinov2-seg", (2, 64, 32)),
                                              ("llama3-csr", (43, 64))])
def test_token_transform_round_trip(split: str, shape: tuple[int, ...]) -> None:
    """Correlated tokens take the Walsh-Hadamard path (lead tokens 1, 0 and 3 of 65, 64 and 43): error within
    half a step in RMS, the knob monotonic, and fewer bits than the same features with tokens shuffled."""
    x = _token_correlated(shape, seed=12)
    results = []
    for rate in NativeCodec.rates:
        msg = encode_features(x, split, "native", rate)
        y = decode_features(msg)
        _, _, step, *_ = nat.HEADER.unpack_from(msg.payload)
        if rate <= 37:
            assert msg.payload[nat.HEADER.size - 1] == nat.TOKEN_BLOCK, rate
        err = y.astype(np.float64) - x
        assert np.sqrt(np.mean(err ** 2)) <= 0.5 * step, rate
        results.append((len(msg.payload), float(np.mean(err ** 2))))
    _assert_monotonic(results)
    shuffled = np.random.default_rng(0).permutation(x, axis=-2)
    plain = encode_features(shuffled, split, "native", 32)
    assert plain.payload[nat.HEADER.size - 1] == 0
    assert len(encode_features(x, split, "native", 32).payload) < 0.85 * len(plain.payload)


def test_bad_token_block_is_refused() -> None:
    msg = encode_features(_token_correlated((65, 32), seed=13), "dinov2-cls", "native", 32)
    for block, cut in ((4, None), (255, None), (8, nat.HEADER.size + 3)):
        payload = bytearray(msg.payload)
        payload[nat.HEADER.size - 1] = block
        bad = type(msg)()
        bad.CopyFrom(msg)
        bad.payload = bytes(payload[:cut] if cut else payload)
        bad.payload_crc32 = zlib.crc32(bad.payload)
        with pytest.raises(BitstreamError):
            decode_features(bad)


def _mirrored_views(seed: int, side: int = 8, channels: int = 32) -> np.ndarray:
    """dinov2-seg-like (2, 1 + side**2, C) features whose second view is the first mirrored plus noise."""
    rng = np.random.default_rng(seed)
    first = rng.standard_t(5, (1 + side * side, channels)) * np.linspace(0.5, 3.0, channels)
    second = first[nat.mirror_permutation(1 + side * side, side)] + 0.3 * rng.standard_normal(first.shape)
    return np.stack([first, second]).astype(np.float32)


def test_mirrored_views_round_trip_and_save_bits() -> None:
    """Seg's flipped second view: coded as sum/difference (header flag), error within half a step in RMS,
    monotonic, and fewer bits than the same views unmirrored (where the flag stays off)."""
    x = _mirrored_views(14)
    results = []
    for rate in NativeCodec.rates:
        msg = encode_features(x, "dinov2-seg", "native", rate)
        y = decode_features(msg)
        _, _, step, *_ = nat.HEADER.unpack_from(msg.payload)
        if rate <= 37:
            assert msg.payload[nat.HEADER.size - 1] & nat.MIRROR_FLAG, rate
        err = y.astype(np.float64) - x
        assert np.sqrt(np.mean(err ** 2)) <= 0.5 * step, rate
        results.append((len(msg.payload), float(np.mean(err ** 2))))
    _assert_monotonic(results)
    shuffled = np.stack([x[0], np.random.default_rng(1).permutation(x[1])])
    plain = encode_features(shuffled, "dinov2-seg", "native", 27)
    assert not plain.payload[nat.HEADER.size - 1] & nat.MIRROR_FLAG
    mirrored = encode_features(x, "dinov2-seg", "native", 27)
    assert len(mirrored.payload) < 0.85 * len(plain.payload)
    assert np.mean((decode_features(mirrored) - x) ** 2) < np.mean((decode_features(plain) - shuffled) ** 2)
    assert nat.mirror_permutation(65, 8)[[0, 1, 8, 9]].tolist() == [0, 8, 1, 16]


def test_mirror_flag_on_a_shape_without_views_is_refused() -> None:
    msg = encode_features(_token_correlated((65, 32), seed=15), "dinov2-cls", "native", 32)
    payload = bytearray(msg.payload)
    payload[nat.HEADER.size - 1] |= nat.MIRROR_FLAG
    msg.payload = bytes(payload)
    msg.payload_crc32 = zlib.crc32(msg.payload)
    with pytest.raises(BitstreamError, match="mirrored"):
        decode_features(msg)


@pytest.mark.parametrize(("dtype", "top"), [(np.float16, 65504.0), (np.float32, 3.0e38)])
def test_features_at_the_edge_of_their_dtype_decode(dtype: type, top: float) -> None:
    """Finite inputs near the dtype's largest value must not round to inf on reconstruction (the decoder
    would refuse what the encoder accepted)."""
    x = np.clip(np.random.default_rng(3).standard_normal((65, 128)) * top, -top, top).astype(dtype)
    for rate in (22, 32):
        y = decode_features(encode_features(x, "dinov2-cls", "native", rate))
        assert y.dtype == dtype and np.isfinite(y).all()


def test_bfloat16_features_round_trip() -> None:
    """bfloat16 (ml_dtypes) input decodes to float32, as the bitstream says; the encoder's digest must match."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = massive((65, 128), seed=4).astype(ml_dtypes.bfloat16)
    y = decode_features(encode_features(x, "dinov2-cls", "native", 32))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x.astype(np.float32)).max() < 60


@pytest.mark.parametrize("bands", [nat.Bands(1, 65, nat.TOKEN_BLOCK), nat.Bands(2, 65, nat.TOKEN_BLOCK, 8),
                                   nat.Bands(2, 65, 0, 8), nat.Bands(3, 43, nat.TOKEN_BLOCK)])
def test_no_coded_components_synthesise_on_every_layout(bands: nat.Bands) -> None:
    """K = 0 (everything quantized to zero at a coarse step) on the token and mirror layouts: an empty
    synthesis, not a reshape error (the encoder hit it at steps 59-63 on a tiny Seg feature; a crafted payload too)."""
    z, factor = bands.synthesise([np.zeros((0, n)) for n in bands.sizes])
    assert z.shape == (0, bands.outer * bands.length)
    assert factor is None or factor.shape == (bands.outer * bands.length,)


def test_coarsest_steps_on_token_and_mirror_layouts_round_trip() -> None:
    """Every rate up to `rate_bounds`' top on features that take the token and mirror paths."""
    for x, split in ((_mirrored_views(5), "dinov2-seg"), (_token_correlated((65, 32), 5), "dinov2-cls")):
        for rate in range(40, NativeCodec.rate_bounds[1] + 1):
            y = decode_features(encode_features(x, split, "native", rate))
            assert y.shape == x.shape and np.isfinite(y).all()


@pytest.mark.parametrize("split", ["dinov2-cls", "dinov2-seg"])
def test_rate_knob_monotonic_over_rate_bounds_on_tiny_features(
    split: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bits never rise and MSE never falls from one step to the next over all of `rate_bounds`, on a tiny
    feature with the shipped transforms (before: Cls step 56 -> 57 gained a 32-bit word and a lone DC, Seg
    step 58 -> 59 a layout whose band offsets cost 2 header bytes, with everything else zero)."""
    from splitfc.common.bench.features import extract_features

    _shipped_transforms(monkeypatch)
    x = np.load(extract_features(tmp_path, split, "tiny", 1)[0].path)
    lo, hi = NativeCodec.rate_bounds
    coded = [encode_features(x, split, "native", rate) for rate in range(lo, hi + 1)]
    bits = [len(m.payload) for m in coded]
    mse = [float(np.mean((decode_features(m).astype(np.float64) - x) ** 2)) for m in coded]
    assert all(b1 <= b0 for b0, b1 in itertools.pairwise(bits)), bits
    assert all(e1 >= e0 * (1 - 1e-9) for e0, e1 in itertools.pairwise(mse)), mse


def test_fuzz_seeds_decode_including_an_empty_token_layout() -> None:
    """The native fuzz seeds (plain, token, mirror and a hand-made K = 0 token-layout bitstream) are valid:
    each decodes like the cloud would decode it (the old decoder refused the K = 0 one: a reshape ValueError,
    wrapped as BitstreamError by decode_features)."""
    from fuzz_targets import decode_outcome, seed_bitstreams

    seeds = seed_bitstreams("native")
    assert len(seeds) >= 4
    for data in seeds:
        assert decode_outcome(data) == "decoded"


def test_encoder_peak_memory_is_bounded_on_the_token_layout() -> None:
    """Peak traced allocation of encoding a token-correlated Dpt feature (2 x 4 x 400 x 384 float32, 4.7 MiB,
    channels last: the token layout is tried) stays below 5 x its size plus 2 float64 blocks of
    `BLOCK_ELEMENTS` (16 MiB). By design the encoder holds the channel-major copy (1 x), the cheapest
    candidate's int32 symbols so far (1 x), the candidate being quantized (float64 token bands: 2 x) and its
    int32 dead-zone magnitudes (1 x), other temporaries in row blocks of about `BLOCK_ELEMENTS` (measured:
    5 x + 1.4 blocks, 7.4 x); keeping every candidate's arrays (before) peaked at 11 x (5 x + 3.5 blocks)."""
    import tracemalloc

    shape = (2, 4, 400, 384)
    rng = np.random.default_rng(21)
    x = np.empty(shape, np.float32)
    x[..., 0, :] = rng.standard_normal((2, 4, 384))
    for t in range(1, shape[-2]):  # AR(1) along the tokens (adjacent correlation 0.9)
        x[..., t, :] = 0.9 * x[..., t - 1, :] + np.float32(0.44) * rng.standard_normal((2, 4, 384))
    codec, spec = NativeCodec(), get_split("dinov2-dpt")
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        coded = codec.encode(x, spec, 37)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert coded.payload[nat.HEADER.size - 1] == nat.TOKEN_BLOCK
    assert peak < 5 * x.nbytes + 2 * 8 * nat.BLOCK_ELEMENTS, peak / x.nbytes
