"""No silent wrong results: integrity digests, finite features, typed errors (library and CLI level).

Each test here fails on a decoder that returns plausible garbage with success, or on an
error path that classifies by message text.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from splitfc.cloud.errors import STATUS_BY_ERROR, Status, status_for
from splitfc.common import errors
from splitfc.common.bitstream import (
    decode_features,
    encode_features,
    header_bytes,
    parse_bitstream,
    read_sfc,
    validate_bitstream,
    write_sfc,
)
from splitfc.common.codecs import get_codec
from splitfc.common.codecs.base import Encoded
from splitfc.common.codecs.native_transform import UnknownTransformError
from splitfc.common.codecs.raw import RawCodec
from splitfc.common.errors import (
    BitstreamError,
    HeaderError,
    IntegrityError,
    NonFiniteError,
    SplitfcError,
)
from splitfc.common.integrity import DIGEST_BYTES, bind_digest, content_digest, verify_digest
from splitfc.common.specs import get_split


def _raw_msg(x: np.ndarray, split: str = "dinov2-cls"):
    return encode_features(x, split, "raw", 0)


def _with_payload(msg, payload: bytes, digest: bytes | None = None):
    """``msg`` with a new payload, its CRC recomputed, and the digest the encoder would compute."""
    msg.payload = payload
    msg.payload_crc32 = zlib.crc32(payload)
    msg.decoded_digest = bind_digest(content_digest(payload), header_bytes(msg)) if digest is None else digest
    return msg


# -- integrity digest -------------------------------------------------------------------------------------------


def test_digest_depends_on_content_shape_and_dtype() -> None:
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert len(content_digest(a)) == DIGEST_BYTES
    assert content_digest(a) == content_digest(a.copy())
    assert content_digest(a) != content_digest(a.reshape(4, 3))  # a swapped axis
    assert content_digest(a) != content_digest(a.T.copy())
    assert content_digest(a) != content_digest(a.astype(np.int32))
    b = a.copy()
    b[2, 3] += 1
    assert content_digest(a) != content_digest(b)  # one level off
    assert content_digest(a) == content_digest(a.astype(">u2"))  # byte order does not matter, values do


def test_verify_digest_refuses_missing_short_and_wrong_digests() -> None:
    a = np.zeros((4, 4), np.uint16)
    verify_digest(a, content_digest(a), "t")
    with pytest.raises(IntegrityError, match="carries no integrity digest"):
        verify_digest(a, b"", "t")
    with pytest.raises(IntegrityError, match="has 3 bytes"):
        verify_digest(a, b"abc", "t")
    with pytest.raises(IntegrityError, match="does not match the encoder's digest"):
        verify_digest(a + 1, content_digest(a), "t")


@pytest.mark.parametrize("codec", ["raw", "hevc", "vvenc", "native"])
def test_every_codec_writes_a_digest_that_its_decoder_checks(codec: str, make_features) -> None:
    if get_codec(codec).unavailable_reason():
        pytest.skip(get_codec(codec).unavailable_reason())
    x = make_features((65, 128), seed=3)
    msg = encode_features(x, "dinov2-cls", codec, 0 if codec == "raw" else 32)
    assert len(msg.decoded_digest) == DIGEST_BYTES
    decode_features(msg)  # the honest decode passes
    msg.decoded_digest = bytes(b ^ 0xFF for b in msg.decoded_digest)
    with pytest.raises(IntegrityError, match="does not match the encoder's digest"):
        decode_features(msg)
    msg.decoded_digest = b""
    with pytest.raises(IntegrityError, match="carries no integrity digest"):
        decode_features(msg)


@pytest.mark.parametrize("garbage", ["flat", "second_half_rows", "transposed"])
def test_a_frame_decoder_returning_garbage_is_caught(garbage: str, make_features, monkeypatch) -> None:
    """The failure of finding 1: a decoder that returns a wrong picture with success. The digest catches it."""
    codec = get_codec("hevc")
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    x = make_features((64, 64), seed=5)
    msg = encode_features(x, "dinov2-cls", codec, 32)
    honest = type(codec).decode_frame

    def corrupt(self, payload, height, width, rate, extra, spec=None):
        f = honest(self, payload, height, width, rate, extra, spec).copy()
        if garbage == "flat":
            return np.full_like(f, int(f.mean()))
        if garbage == "second_half_rows":
            f[height // 2:] = 1023 - f[height // 2:]
            return f
        return np.ascontiguousarray(f.T)  # square frame: same shape, swapped axes

    monkeypatch.setattr(type(codec), "decode_frame", corrupt)
    with pytest.raises(IntegrityError):
        decode_features(msg)


# -- finite features and storable values ---------------------------------------------------------------------------


def test_nan_in_a_raw_payload_is_refused_after_decoding(make_features) -> None:
    x = make_features((65, 128), seed=1)
    msg = _raw_msg(x)
    y = x.copy()
    y[3, 7] = np.nan
    _with_payload(msg, y.astype("<f4").tobytes())  # a hostile encoder: CRC and digest consistent
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        decode_features(msg)
    y[3, 7] = np.inf
    _with_payload(msg, y.astype("<f4").tobytes())
    with pytest.raises(NonFiniteError):
        decode_features(msg)


def test_features_with_nan_are_refused_at_encode(make_features) -> None:
    x = make_features((65, 128), seed=1).copy()
    x[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        encode_features(x, "dinov2-cls", "raw", 0)


@pytest.mark.parametrize(("store", "big"), [("float16", 70000.0), ("float16", -65520.0), ("bfloat16", 3.4e38)])
def test_half_precision_refuses_values_it_cannot_hold(store: str, big: float, make_features) -> None:
    x = make_features((65, 128), seed=2).copy()
    x[10, 10] = big
    with pytest.raises(NonFiniteError, match=re.escape(f"largest feature magnitude {abs(big):.6g}")):
        encode_features(x, "dinov2-cls", RawCodec(store_dtype=store), 0)


def test_half_precision_keeps_values_it_can_hold(make_features) -> None:
    x = make_features((65, 128), seed=2).copy()
    x[10, 10] = 65504.0
    y = decode_features(encode_features(x, "dinov2-cls", RawCodec(store_dtype="float16"), 0))
    assert np.all(np.isfinite(y)) and y[10, 10] == 65504.0


@pytest.mark.parametrize(
    ("low", "high", "what"),
    [(float("-inf"), 5.0, "-inf"), (-5.0, float("inf"), "inf"), (float("nan"), 5.0, "nan"), (5.0, -5.0, "")],
)
def test_header_ranges_must_be_finite_and_ordered(low: float, high: float, what: str, make_features) -> None:
    codec = get_codec("hevc")
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    msg = encode_features(make_features((65, 128), seed=4), "dinov2-cls", codec, 32)
    msg.preprocessing.ranges[0].low, msg.preprocessing.ranges[0].high = low, high
    with pytest.raises(HeaderError, match=f"invalid truncation range.*{what}"):
        validate_bitstream(msg)


# -- typed errors: one table, reasons from types only --------------------------------------------------------------


def test_every_error_type_has_its_own_reason() -> None:
    types = [t for t in vars(errors).values() if isinstance(t, type) and issubclass(t, SplitfcError)]
    reasons = {t: t.reason for t in types}
    # distinct types carry distinct reasons, except the decode family (BitstreamError and CodecError)
    seen: dict[str, type] = {}
    for t, r in reasons.items():
        if r in seen and r != "decode":
            raise AssertionError(f"{t.__name__} and {seen[r].__name__} share reason {r!r}")
        seen[r] = t


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (errors.ChecksumError("x"), Status.INVALID_ARGUMENT, "crc"),
        (errors.FormatVersionError("x"), Status.INVALID_ARGUMENT, "version"),
        (errors.IntegrityError("x"), Status.INVALID_ARGUMENT, "integrity"),
        (errors.NonFiniteError("x"), Status.INVALID_ARGUMENT, "non_finite"),
        (errors.CodecUnavailableError("x"), Status.FAILED_PRECONDITION, "codec_unavailable"),
        (errors.ArtefactUnavailableError("x"), Status.FAILED_PRECONDITION, "artefact_unavailable"),
        (UnknownTransformError("x"), Status.FAILED_PRECONDITION, "unknown_transform"),
        # message texts full of other reasons' words choose nothing
        (BitstreamError("version CRC unknown codec over the limit protobuf parse failed"),
         Status.INVALID_ARGUMENT, "decode"),
        (SplitfcError("version"), Status.INVALID_ARGUMENT, "error"),
    ],
)
def test_status_table(exc: SplitfcError, code: Status, reason: str) -> None:
    assert status_for(exc) == (code, reason)
    assert STATUS_BY_ERROR[-1][0] is SplitfcError  # the catch-all comes last


def test_a_client_string_saying_version_is_not_a_version_error(make_features) -> None:
    """Finding 6: a raw payload whose client-supplied ``compression`` extra contains "version"."""
    msg = _raw_msg(make_features((65, 128), seed=6))
    msg.codec.extra["compression"] = "version-9"
    with pytest.raises(BitstreamError) as info:
        decode_features(msg)
    assert status_for(info.value) == (Status.INVALID_ARGUMENT, "decode")
    assert "unknown compression 'version-9'" in str(info.value)


def test_a_bad_hyperprior_payload_version_byte_is_a_decode_error(make_features) -> None:
    """Finding 6: the learned codec's internal payload version is not the bitstream format version."""
    codec = get_codec("hyperprior")
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    msg = encode_features(make_features((65, 128), seed=6), "dinov2-cls", "hyperprior", 3)
    _with_payload(msg, bytes([99]) + msg.payload[1:], msg.decoded_digest)
    with pytest.raises(BitstreamError, match="payload version 99") as info:
        decode_features(msg)
    assert status_for(info.value) == (Status.INVALID_ARGUMENT, "decode")


def test_codec_decode_takes_the_digest_from_the_coded_record(make_features) -> None:
    spec = get_split("dinov2-cls")
    x = make_features((65, 128), seed=8)
    enc = RawCodec().encode(x, spec, 0)
    np.testing.assert_array_equal(RawCodec().decode(enc, spec, x.shape, np.dtype(np.float32), 0), x)
    with pytest.raises(IntegrityError):
        RawCodec().decode(Encoded(enc.payload, None, enc.extra, b"\0" * 8), spec, x.shape, np.dtype(np.float32), 0)


# -- the CLI: one line and a non-zero exit -------------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "splitfc", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("splitfc: error:") and needle in lines[0], proc.stderr


def test_cli_decode_of_a_digest_mismatch_fails_with_one_line(tmp_path: Path, make_features) -> None:
    sfc = tmp_path / "x.sfc"
    msg = _raw_msg(make_features((65, 128), seed=9))
    msg.decoded_digest = b"\1" * DIGEST_BYTES
    write_sfc(sfc, msg)
    _one_line_error(_run_cli("decode", str(sfc), "-o", str(tmp_path / "y.npy")), "does not match the encoder's digest")
    assert not (tmp_path / "y.npy").exists()
    assert read_sfc(sfc).decoded_digest == b"\1" * DIGEST_BYTES


def test_cli_raw_float16_overflow_fails_with_one_line(tmp_path: Path, make_features) -> None:
    x = make_features((257, 1536), seed=7).copy()
    x[5, 5] = 1e6
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    proc = _run_cli("encode", str(npy), "--split", "dinov2-cls", "--codec", "raw", "--raw-dtype", "float16",
                    "-o", str(tmp_path / "x.sfc"))
    _one_line_error(proc, "largest feature magnitude 1e+06")
    assert not (tmp_path / "x.sfc").exists()


# -- the digest covers the header too (an outsider's single-bit flips in a .sfc header) ------------------------


@pytest.mark.parametrize("codec", ["hevc", "raw", "native"])
def test_every_single_bit_flip_in_the_header_is_refused_or_harmless(codec: str, make_features) -> None:
    """Flip each bit of every header byte of a serialized bitstream: the decode must fail, or give exactly
    the honest features (a flip in a byte the decoder does not use). It must never return other features."""
    if get_codec(codec).unavailable_reason():
        pytest.skip(get_codec(codec).unavailable_reason())
    x = make_features((2, 9, 16), seed=11)
    msg = encode_features(x, "dinov2-seg", codec, 0 if codec == "raw" else 32)
    honest = decode_features(msg)
    data = msg.SerializeToString()
    start = data.index(msg.payload)
    header_positions = [i for i in range(len(data)) if not start <= i < start + len(msg.payload)]
    wrong = []
    for i in header_positions:
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            try:
                out = decode_features(parse_bitstream(bytes(flipped)))
            except SplitfcError:
                continue
            if out.shape != honest.shape or out.dtype != honest.dtype or not np.array_equal(out, honest):
                wrong.append((i, bit))
    assert not wrong, f"{len(wrong)} header bit flips decoded to other features, e.g. {wrong[:5]}"


def test_a_relabelled_split_or_bit_depth_is_refused(make_features) -> None:
    codec = get_codec("hevc")
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    msg = encode_features(make_features((65, 128), seed=12), "dinov2-cls", codec, 32)
    relabelled = type(msg)()
    relabelled.CopyFrom(msg)
    relabelled.split = "llama3-csr"  # same layout and packing: only the digest's header binding catches it
    with pytest.raises(IntegrityError):
        decode_features(relabelled)
    msg.preprocessing.bit_depth = 11
    with pytest.raises(HeaderError, match="codes 10-bit frames"):
        decode_features(msg)
