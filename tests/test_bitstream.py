"""The bitstream container: header fields, BPFP accounting, validation of hostile input."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from splitfc.common.bitstream import (
    FORMAT_VERSION,
    SFC_MAGIC,
    bitstream_stats,
    bpfp,
    decode_features,
    encode_features,
    parse_bitstream,
    read_sfc,
    validate_bitstream,
    write_sfc,
)
from splitfc.common.errors import BitstreamError, ShapeError, UnknownNameError


def test_header_describes_the_payload(make_features) -> None:
    x = make_features((2, 4, 9, 16), seed=1)
    msg = encode_features(x, "dinov2-dpt", "hevc", 32)
    assert msg.format_version == FORMAT_VERSION
    assert msg.split == "dinov2-dpt" and msg.codec.codec == "hevc" and msg.codec.rate == 32
    assert list(msg.tensors[0].shape) == [2, 4, 9, 16]
    pre = msg.preprocessing
    assert pre.bit_depth == 10 and pre.packing == "views_layers"
    assert (pre.frame_height, pre.frame_width) == (18, 64)
    assert [(r.low, r.high) for r in pre.ranges] == [(-1, 1), (-2, 2), (-10, 10), (-20, 20)]
    assert msg.payload_crc32 == zlib.crc32(msg.payload)


def test_bpfp_counts_payload_bits_only(make_features) -> None:
    x = make_features((65, 128), seed=2)
    msg = encode_features(x, "dinov2-cls", "hevc", 37)
    stats = bitstream_stats(msg)
    assert stats.feature_points == 65 * 128
    assert stats.payload_bits == 8 * len(msg.payload)
    assert stats.bpfp == stats.payload_bits / stats.feature_points
    assert stats.header_bytes == len(msg.SerializeToString()) - len(msg.payload) > 0
    assert stats.total_bytes == stats.header_bytes + len(msg.payload)
    assert stats.bpfp_with_header > stats.bpfp


def test_bpfp_function() -> None:
    assert bpfp(32 * 257 * 1536, 257 * 1536) == 32.0
    with pytest.raises(ValueError):
        bpfp(8, 0)


def test_sfc_file_round_trip(tmp_path, make_features) -> None:
    x = make_features((16, 128, 128), seed=3)
    path = tmp_path / "x.sfc"
    size = write_sfc(path, encode_features(x, "sd3-tti", "raw", 0))
    assert path.read_bytes()[:8] == SFC_MAGIC and size == path.stat().st_size
    np.testing.assert_array_equal(decode_features(read_sfc(path)), x)


def _valid(make_features):
    return encode_features(make_features((8, 16), seed=4), "dinov2-cls", "raw", 0)


def test_crc_mismatch(make_features) -> None:
    msg = _valid(make_features)
    msg.payload = msg.payload[:-1] + bytes([msg.payload[-1] ^ 1])
    with pytest.raises(BitstreamError, match="CRC32"):
        decode_features(msg)


def test_unknown_version(make_features) -> None:
    msg = _valid(make_features)
    msg.format_version = 99
    with pytest.raises(BitstreamError, match="version 99"):
        validate_bitstream(msg)


def test_unknown_codec_and_split(make_features) -> None:
    msg = _valid(make_features)
    msg.codec.codec = "jpeg9000"
    with pytest.raises(BitstreamError, match=r"unknown codec 'jpeg9000'.*raw"):
        validate_bitstream(msg)
    msg = _valid(make_features)
    msg.split = "resnet-c5"
    with pytest.raises(UnknownNameError, match="valid splits: dinov2-cls"):
        validate_bitstream(msg)


def test_shape_that_does_not_fit_the_split(make_features) -> None:
    msg = _valid(make_features)
    del msg.tensors[0].shape[:]
    msg.tensors[0].shape.extend([2, 8, 16])
    with pytest.raises(ShapeError, match="dinov2-cls expects a 2-d tensor"):
        validate_bitstream(msg)


def test_huge_declared_shape_is_refused_before_allocation(make_features) -> None:
    msg = _valid(make_features)
    del msg.tensors[0].shape[:]
    msg.tensors[0].shape.extend([10**9, 10**9])
    with pytest.raises(BitstreamError, match="over the limit"):
        validate_bitstream(msg, max_elements=10**8)
    with pytest.raises(BitstreamError, match="that a 512-byte raw payload can carry"):
        decode_features(msg)  # without a limit the payload size still bounds the declared shape


def test_frame_header_must_match_shape(make_features) -> None:
    msg = encode_features(make_features((8, 16), seed=5), "dinov2-cls", "hevc", 32)
    msg.preprocessing.frame_width = 17
    with pytest.raises(BitstreamError, match="does not match shape"):
        validate_bitstream(msg)


def test_garbage_is_not_a_bitstream() -> None:
    with pytest.raises(BitstreamError):
        parse_bitstream(b"\xff" * 64)


def test_foreign_file(tmp_path) -> None:
    path = tmp_path / "x.sfc"
    path.write_bytes(b"\x93NUMPY" + b"\0" * 100)
    with pytest.raises(BitstreamError, match="bad magic"):
        read_sfc(path)
    path.write_bytes(SFC_MAGIC)
    with pytest.raises(BitstreamError, match="truncated"):
        read_sfc(path)
