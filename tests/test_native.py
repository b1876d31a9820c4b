"""The feature-native codec: bounded error, monotonic rate knob, bad input, determinism."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from splitfc.common.bitstream import bitstream_stats, decode_features, encode_features, parse_bitstream
from splitfc.common.codecs import get_codec
from splitfc.common.codecs.native import NativeCodec
from splitfc.common.errors import BitstreamError, IntegrityError, SplitfcError, TooManyElementsError
from splitfc.common.specs import get_split

SHAPES = {"dinov2-cls": (65, 128), "dinov2-seg": (2, 65, 128), "dinov2-dpt": (2, 4, 81, 128),
          "llama3-csr": (24, 128), "sd3-tti": (16, 16, 16)}


def massive(shape: tuple[int, ...], seed: int = 0, channel_axis: int = -1) -> np.ndarray:
    """Student-t features with a few massive-activation channels (offsets of -300, one channel x50)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, shape).astype(np.float32)
    x = np.moveaxis(x, channel_axis, -1)
    x[..., [1, 7]] -= 300.0
    x[..., 3] *= 50.0
    return np.ascontiguousarray(np.moveaxis(x, -1, channel_axis))


def _round_trip(x: np.ndarray, split: str, rate: int) -> tuple[np.ndarray, float]:
    msg = parse_bitstream(encode_features(x, split, "native", rate).SerializeToString())
    y = decode_features(msg)
    assert y.shape == x.shape and y.dtype == x.dtype
    return y, bitstream_stats(msg).bpfp


@pytest.mark.parametrize("split", list(SHAPES))
def test_error_is_within_half_a_step_and_rate_is_monotonic(split: str) -> None:
    """|error| <= (0.5 + dead zone) * step + the mean's grid error everywhere; BPFP falls, MSE grows as rate rises."""
    axis = 0 if split == "sd3-tti" else -1
    x = massive(SHAPES[split], seed=1, channel_axis=axis)
    spec = get_split(split)
    results = []
    for rate in NativeCodec.rates:
        y, bpfp = _round_trip(x, split, rate)
        moved = np.moveaxis(x.astype(np.float64), axis, 0).reshape(x.shape[axis], -1)
        rms = np.sqrt(np.mean((moved - moved.mean(axis=1, keepdims=True)) ** 2))
        step = rms * 2 ** ((rate - 32) / 6)
        bound = (0.5 + 0.15) * step + step / 16 + 1e-3
        assert np.max(np.abs(y.astype(np.float64) - x)) <= bound, (split, rate)
        results.append((bpfp, float(np.mean((y.astype(np.float64) - x) ** 2))))
    assert spec.id == split
    assert all(a[0] > b[0] for a, b in itertools.pairwise(results)), results
    assert all(a[1] < b[1] for a, b in itertools.pairwise(results)), results


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


def test_corrupt_payloads_are_clean_errors() -> None:
    msg = encode_features(massive((65, 128)), "dinov2-cls", "native", 32)
    for payload in (msg.payload[:5], msg.payload[:20], bytes(b ^ 0x5A for b in msg.payload), b"\x01" * 40):
        bad = type(msg)()
        bad.CopyFrom(msg)
        bad.payload = payload
        bad.payload_crc32 = zlib.crc32(payload)
        with pytest.raises(SplitfcError):
            decode_features(bad)
    bad = type(msg)()
    bad.CopyFrom(msg)
    bad.codec.extra["native"] = "v9"
    with pytest.raises(BitstreamError, match="version"):
        decode_features(bad)


def test_step_changed_in_payload_is_an_integrity_error() -> None:
    """A payload whose step (or a symbol) differs from the encoder's decodes to other features: refused."""
    msg = encode_features(massive((65, 128)), "dinov2-cls", "native", 32)
    payload = bytearray(msg.payload)
    payload[2] ^= 0x01  # lowest mantissa bit of the float32 step
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
