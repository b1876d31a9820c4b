"""The feature bitstream: build, parse, validate, and account for its rate.

``encode_features``/``decode_features`` are the one path from a feature tensor
to a `FeatureBitstream` message and back. ``.sfc`` files are ``SFC_MAGIC``
followed by the serialized message. BPFP counts payload bits only; the header
is reported separately (``header_bytes``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from math import prod
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from splitfc.common.codecs import CODECS, Codec, Encoded, get_codec
from splitfc.common.errors import (
    BitstreamError,
    BitstreamParseError,
    ChecksumError,
    FormatVersionError,
    HeaderError,
    NonFiniteError,
    SplitfcError,
    TooManyElementsError,
    UnknownCodecError,
    UnknownNameError,
)
from splitfc.common.integrity import bind_digest
from splitfc.common.preprocess import FrameInfo
from splitfc.common.specs import SPLITS, SplitSpec, get_split
from splitfc.common.untrusted import quote
from splitfc.v1 import bitstream_pb2 as pb

FORMAT_VERSION = 2
"""Version 2 added the required ``decoded_digest`` (integrity check of the decoded content)."""
SFC_MAGIC = b"SPLITFC\x01"
MAX_EXTRAS = 16
"""Most ``codec.extra`` entries a bitstream may carry (codecs write two or three)."""
MAX_EXTRA_CHARS = 256
"""Longest ``codec.extra`` key or value (presets, checkpoint ids and split names are far shorter)."""

_DTYPES: dict[str, int] = {
    "float32": pb.DTYPE_FLOAT32,
    "float16": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16,
}
_NUMPY_DTYPE: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_FLOAT16: np.dtype(np.float16),
    # numpy has no bfloat16: such tensors decode to float32.
    pb.DTYPE_BFLOAT16: np.dtype(np.float32),
}


def bpfp(payload_bits: int, feature_points: int) -> float:
    """Bits per feature point (paper Section 5.1): coded payload bits / feature points."""
    if feature_points <= 0:
        raise ValueError("feature_points must be positive")
    return payload_bits / feature_points


@dataclass(frozen=True)
class BitstreamStats:
    """Rate accounting of one bitstream. ``bpfp`` counts the payload only."""

    split: str
    codec: str
    rate: int
    shape: tuple[int, ...]
    dtype: str
    feature_points: int
    payload_bits: int
    header_bytes: int
    total_bytes: int
    bpfp: float
    bpfp_with_header: float

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict (``shape`` as a list); flat, so no deep copy (per request in the cloud)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["shape"] = list(self.shape)
        return d


def bitstream_stats(msg: pb.FeatureBitstream) -> BitstreamStats:
    """Rate accounting for a (validated) bitstream message."""
    shape = tuple(int(s) for s in msg.tensors[0].shape)
    points = prod(shape)
    total = msg.ByteSize()
    payload_bits = len(msg.payload) * 8
    return BitstreamStats(
        split=msg.split,
        codec=msg.codec.codec,
        rate=msg.codec.rate,
        shape=shape,
        dtype=pb.DType.Name(msg.tensors[0].dtype).removeprefix("DTYPE_").lower(),
        feature_points=points,
        payload_bits=payload_bits,
        header_bytes=total - len(msg.payload),
        total_bytes=total,
        bpfp=bpfp(payload_bits, points),
        bpfp_with_header=bpfp(total * 8, points),
    )


def _dtype_id(x: np.ndarray) -> int:
    name = x.dtype.name
    if name not in _DTYPES:
        raise SplitfcError(f"features must be float32, float16 or bfloat16, got {name}")
    return _DTYPES[name]


def header_bytes(msg: pb.FeatureBitstream) -> bytes:
    """The header the integrity digest is bound to: ``msg`` without ``payload``, ``payload_crc32`` and
    ``decoded_digest``, serialized deterministically (fields in number order, map entries sorted).

    Everything the decoder rebuilds the features from is in it: format version, split, codec, rate and
    extras, tensor name, shape and dtype, pre-processing.
    """
    header = pb.FeatureBitstream(format_version=msg.format_version, split=msg.split)
    header.codec.CopyFrom(msg.codec)
    header.tensors.extend(msg.tensors)
    if msg.HasField("preprocessing"):
        header.preprocessing.CopyFrom(msg.preprocessing)
    return header.SerializeToString(deterministic=True)


def encode_features(
    features: np.ndarray, split: str | SplitSpec, codec: str | Codec, rate: int, name: str = "features"
) -> pb.FeatureBitstream:
    """Code one feature tensor of a split into a `FeatureBitstream` message."""
    spec = get_split(split) if isinstance(split, str) else split
    codec_obj = get_codec(codec) if isinstance(codec, str) else codec
    features = np.asarray(features)
    dtype_id = _dtype_id(features)
    spec.check_shape(features.shape)
    if not np.all(np.isfinite(features)):
        raise NonFiniteError("features contain NaN or infinite values")
    codec_obj.require_available()
    encoded = codec_obj.encode(features, spec, rate)
    msg = pb.FeatureBitstream(
        format_version=FORMAT_VERSION,
        split=spec.id,
        codec=pb.CodecParams(codec=codec_obj.name, rate=rate, extra=encoded.extra),
        tensors=[pb.TensorInfo(name=name, shape=list(features.shape), dtype=dtype_id)],
        payload=encoded.payload,
        payload_crc32=zlib.crc32(encoded.payload),
    )
    if encoded.frame is not None:
        msg.preprocessing.CopyFrom(encoded.frame.to_proto())
    msg.decoded_digest = bind_digest(encoded.digest, header_bytes(msg))
    return msg


def validate_bitstream(msg: pb.FeatureBitstream, max_elements: int | None = None) -> SplitSpec:
    """Check a parsed message before any allocation or decoding; return its split spec.

    Raises `BitstreamError` (or another `SplitfcError`) naming the first problem.
    """
    return _checked_header(msg, max_elements)[0]


def _checked_header(
    msg: pb.FeatureBitstream, max_elements: int | None
) -> tuple[SplitSpec, tuple[int, ...], FrameInfo | None, bytes]:
    """`validate_bitstream`'s checks; returns the split, the tensor shape, the pre-processing and the payload
    (read once: every read of a protobuf bytes field is a copy)."""
    if msg.format_version != FORMAT_VERSION:
        raise FormatVersionError(
            f"unsupported bitstream format version {msg.format_version} (this reader knows {FORMAT_VERSION})"
        )
    if msg.split not in SPLITS:
        raise UnknownNameError(f"unknown split {quote(msg.split)}; valid splits: {', '.join(SPLITS)}")
    spec = SPLITS[msg.split]
    if msg.codec.codec not in CODECS:
        raise UnknownCodecError(f"unknown codec {quote(msg.codec.codec)}; valid codecs: {', '.join(CODECS)}")
    codec_cls = CODECS[msg.codec.codec]
    codec_cls.check_rate(msg.codec.rate)
    extra = msg.codec.extra
    if len(extra) > MAX_EXTRAS:
        raise HeaderError(f"bitstream carries {len(extra)} codec extras, over the limit of {MAX_EXTRAS}")
    for key, value in extra.items():
        if len(key) > MAX_EXTRA_CHARS or len(value) > MAX_EXTRA_CHARS:
            raise HeaderError(
                f"codec extra {quote(key)} = {quote(value)} is over the limit of {MAX_EXTRA_CHARS} characters"
            )
    if len(msg.tensors) != 1:
        raise BitstreamError(f"bitstream must carry exactly one tensor, found {len(msg.tensors)}")
    tensor = msg.tensors[0]
    if tensor.dtype not in _NUMPY_DTYPE:
        raise BitstreamError(f"unknown tensor dtype id {tensor.dtype}")
    shape = tuple(int(s) for s in tensor.shape)
    spec.check_shape(shape)
    if max_elements is not None and prod(shape) > max_elements:
        raise TooManyElementsError(
            f"declared shape {shape} has {prod(shape)} elements, over the limit of {max_elements}"
        )
    elements = prod(shape)
    payload = msg.payload
    payload_bits = len(payload) * 8
    if payload_bits < codec_cls.min_payload_bits_per_element * elements:
        # Decode work grows with the declared elements: a payload cannot stand for more than its codec's
        # smallest coding of them (e.g. a few hundred hyperprior bytes declaring 33 M elements).
        raise TooManyElementsError(
            f"declared shape {shape} has {elements} elements, over the limit of "
            f"{int(payload_bits / codec_cls.min_payload_bits_per_element)} that a {len(payload)}-byte "
            f"{codec_cls.name} payload can carry (at least {codec_cls.min_payload_bits_per_element:.3g} bits "
            "per element)"
        )
    if zlib.crc32(payload) != msg.payload_crc32:
        raise ChecksumError("payload CRC32 mismatch: the bitstream is corrupt")
    if codec_cls.truncation is not None and not msg.HasField("preprocessing"):
        raise HeaderError(f"codec {codec_cls.name} bitstream lacks pre-processing parameters")
    frame = FrameInfo.from_proto(msg.preprocessing, spec, shape) if msg.HasField("preprocessing") else None
    return spec, shape, frame, payload


def decode_features(msg: pb.FeatureBitstream, max_elements: int | None = None) -> np.ndarray:
    """Validate and decode a `FeatureBitstream` back into a feature tensor."""
    spec, shape, frame, payload = _checked_header(msg, max_elements)
    codec = get_codec(msg.codec.codec)
    codec.require_available()
    tensor = msg.tensors[0]
    coded = Encoded(payload, frame, dict(msg.codec.extra), msg.decoded_digest, header_bytes(msg))
    del payload  # held by `coded` alone from here
    try:
        out = codec.decode(coded, spec, shape, _NUMPY_DTYPE[tensor.dtype], msg.codec.rate)
    except SplitfcError:
        raise
    except Exception as exc:  # a codec's internal failure on hostile input is a bitstream problem
        raise BitstreamError(f"codec {codec.name} could not decode the payload: {str(exc)[:200]}") from None
    if out.shape != shape:
        raise BitstreamError(f"codec {codec.name} decoded shape {out.shape}, header says {shape}")
    if not np.all(np.isfinite(out)):
        raise NonFiniteError(f"codec {codec.name} decoded features that contain NaN or infinite values")
    return out


def parse_bitstream(data: bytes) -> pb.FeatureBitstream:
    """Parse serialized `FeatureBitstream` bytes; errors are `BitstreamError`."""
    msg = pb.FeatureBitstream()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise BitstreamParseError(f"not a splitfc bitstream (protobuf parse failed: {exc})") from None
    return msg


def write_sfc(path: Path, msg: pb.FeatureBitstream) -> int:
    """Write a ``.sfc`` file; return its size in bytes."""
    data = SFC_MAGIC + msg.SerializeToString()
    Path(path).write_bytes(data)
    return len(data)


def read_sfc(path: Path) -> pb.FeatureBitstream:
    """Read and parse a ``.sfc`` file (not yet validated)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SplitfcError(f"cannot read {path}: {exc.strerror}") from None
    if not data.startswith(SFC_MAGIC):
        raise BitstreamParseError(f"{path} is not a splitfc .sfc file (bad magic)")
    msg = parse_bitstream(data[len(SFC_MAGIC):])
    if not msg.tensors or not msg.split:
        raise BitstreamError(f"{path} is truncated or empty (no header)")
    return msg
