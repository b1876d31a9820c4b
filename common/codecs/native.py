"""``native``: a feature-native codec: the tensor is coded as it is, with no image packing.

Parts (each chosen by a measurement in README.md, "The native codec"):

1. Per-channel mean removal (the channel axis of the split's layout): the massive-activation channels
   of large models (paper Table 4: Cls spans [-542, 94]) are mostly a per-channel offset; the means are
   side information, quantized on a grid of ``step / MEAN_GRID`` and sent as integers.
2. Uniform dead-zone scalar quantization with one step for the whole tensor (uniform absolute step:
   the MSE-optimal allocation across channels, task-agnostic). ``step = rms * 2**((rate - 32) / 6)``
   where ``rms`` is the root mean square of the mean-removed tensor; the rate knob doubles the step
   every 6 like an H.265 QP, so it is monotonic (higher rate = coarser = fewer bits).
3. Entropy coding: the integer symbols, zig-zag mapped, laid out channel-major (each channel's
   tokens contiguous) and split into byte planes, go through zstd (one frame whose content size the
   decoder knows before it decompresses; `raw.zstd_decompress_bounded`).

No fitting: everything the decoder needs travels in the payload. Decoding is integer-exact up to the
final dequantization ``float32(float64(MEAN_GRID * q + m) * (step / MEAN_GRID))``: an element-wise
product of an exact integer and a transmitted float32 step (IEEE, no reduction, no BLAS), which the
encoder computes with the same function; the integrity digest covers that float32 reconstruction.

Payload: ``<B version><B symbol bytes><f4 step><I channels>`` then one zstd frame holding the
channel means (int32, ``channels`` of them) and the symbol byte planes (``symbol bytes`` planes of
one byte per element, least significant first).
"""

from __future__ import annotations

import struct
from typing import ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs.base import Codec, Encoded
from splitfc.common.codecs.raw import ZSTD_MAX_BLOCK, check_storable, zstd_decompress_bounded
from splitfc.common.errors import BitstreamError, SplitfcError
from splitfc.common.integrity import content_digest, verify_digest
from splitfc.common.specs import SplitSpec
from splitfc.common.untrusted import quote

VERSION = 1
HEADER = struct.Struct("<BBfI")
MEAN_GRID = 8
"""Channel means are sent in units of ``step / MEAN_GRID`` (their error is at most step / 16)."""
DEAD_ZONE = 0.15
"""Rounding offset taken off before flooring |x| / step: 0 is plain rounding."""
MAX_SYMBOL = 1 << 30
"""Largest |symbol| coded: a tensor whose values span more than 2**30 steps is refused."""
ZSTD_LEVEL = 3


def channel_axis(spec: SplitSpec, ndim: int) -> int:
    """The channel axis of a tensor of ``spec`` (the layout's ``channels``; the last axis otherwise)."""
    if "channels" in spec.layout and len(spec.layout) == ndim:
        return spec.layout.index("channels")
    return ndim - 1


def _zigzag(q: np.ndarray) -> np.ndarray:
    """int32 -> uint32: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return ((q << 1) ^ (q >> 31)).view(np.uint32)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint32, copy=False)
    return (z >> 1).astype(np.int32) ^ -(z & 1).astype(np.int32)


BLOCK_ELEMENTS = 1 << 20
"""Dequantization runs over blocks of channels of about this many elements (bounded temporaries)."""


def _dequantize(zigzagged: np.ndarray, means: np.ndarray, step: np.float32) -> np.ndarray:
    """float32 reconstruction of channel-major zig-zag ``symbols`` (C x N uint) and ``means`` (C int64).

    ``MEAN_GRID * q + m`` is an exact integer in float64 (|.| < 2**34), so the only rounding is the
    product with ``step / MEAN_GRID`` (exact: MEAN_GRID is a power of two) and the cast to float32.
    Element-wise only, in blocks of channels, so no result depends on threads or BLAS.
    """
    channels, tokens = zigzagged.shape
    out = np.empty((channels, tokens), np.float32)
    rows = max(1, BLOCK_ELEMENTS // max(tokens, 1))
    scale = np.float64(step) / MEAN_GRID
    for c0 in range(0, channels, rows):
        fine = _unzigzag(zigzagged[c0:c0 + rows]).astype(np.float64)
        fine *= MEAN_GRID
        fine += means[c0:c0 + rows].astype(np.float64)[:, None]
        fine *= scale
        out[c0:c0 + rows] = fine
    return out


@register_codec
class NativeCodec(Codec):
    """Feature-native codec: channel means, one dead-zone quantizer step, zstd on byte planes."""

    name: ClassVar[str] = "native"
    description: ClassVar[str] = "feature-native: channel means + dead-zone scalar quantization + zstd (no packing)"
    truncation: ClassVar = None
    rate_name: ClassVar[str] = "step"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42)
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)
    min_payload_bits_per_element: ClassVar[float] = 4 * 8 / ZSTD_MAX_BLOCK
    """Exact: every element is at least one byte of the zstd frame, whose densest coding is a 4-byte RLE
    block per 128 KiB (1/4096 bit per element)."""

    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        """Code ``features`` (any float dtype, the split's layout); raises `NonFiniteError` on NaN/inf."""
        self.check_rate(rate)
        check_storable(features, "float32")
        axis = channel_axis(spec, features.ndim)
        moved = np.moveaxis(np.asarray(features, dtype=np.float64), axis, 0)
        x = np.ascontiguousarray(moved).reshape(features.shape[axis], -1)
        mean = x.mean(axis=1)
        centred = (x - mean[:, None]).ravel()
        rms = float(np.sqrt(np.dot(centred, centred) / centred.size)) if centred.size else 0.0
        del centred
        if not rms > 0.0:
            rms = max(float(np.max(np.abs(x))) if x.size else 0.0, 1.0)
        step = np.float32(rms * 2.0 ** ((rate - 32) / 6))
        if not (np.isfinite(step) and step > 0):
            raise SplitfcError(f"native cannot code these features: quantizer step {float(step)!r}")
        fine_step = float(step) / MEAN_GRID
        mean_idx = np.rint(mean / fine_step)
        scaled = x - (mean_idx * fine_step)[:, None]
        scaled *= 1.0 / float(step)
        scaled += np.copysign(0.5 - DEAD_ZONE, scaled)  # dead-zone rounding of |x| / step, sign kept
        np.trunc(scaled, out=scaled)
        largest = max(float(scaled.max()), -float(scaled.min())) if scaled.size else 0.0
        if largest > MAX_SYMBOL or np.abs(mean_idx).max(initial=0) > MAX_SYMBOL:
            raise SplitfcError("native cannot code these features: values span more than 2**30 quantizer steps")
        symbols = scaled.astype(np.int32)
        mean_idx = mean_idx.astype(np.int64)
        del scaled
        zz = _zigzag(symbols)
        top = int(zz.max()) if zz.size else 0
        width = 1 if top < 256 else 2 if top < 65536 else 4
        if width == 1:
            planes = zz.astype(np.uint8)
        else:
            planes = np.ascontiguousarray(zz.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T)
        body = mean_idx.astype("<i4").tobytes() + planes.tobytes()
        import zstandard

        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(body)
        payload = HEADER.pack(VERSION, width, step, x.shape[0]) + packed
        recon = _dequantize(zz, mean_idx, step)
        out = self._to_layout(recon, features.shape, axis, features.dtype)
        return Encoded(payload, None, {"native": f"v{VERSION}"}, content_digest(out))

    @staticmethod
    def _to_layout(recon: np.ndarray, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> np.ndarray:
        moved = (shape[axis], *shape[:axis], *shape[axis + 1:])
        return np.ascontiguousarray(np.moveaxis(recon.reshape(moved), 0, axis)).astype(dtype, copy=False)

    def decode(
        self, coded: Encoded, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype, rate: int,
    ) -> np.ndarray:
        self.check_rate(rate)
        version = coded.extra.get("native")
        if version != f"v{VERSION}":
            raise BitstreamError(f"native bitstream of version {quote(str(version))}, this decoder reads v{VERSION}")
        payload = coded.payload
        if len(payload) < HEADER.size:
            raise BitstreamError(f"native payload has {len(payload)} bytes, shorter than its {HEADER.size}-byte header")
        got_version, width, step, channels = HEADER.unpack_from(payload)
        axis = channel_axis(spec, len(shape))
        if got_version != VERSION or width not in (1, 2, 4):
            raise BitstreamError(f"native payload header is corrupt (version {got_version}, symbol bytes {width})")
        if channels != shape[axis]:
            raise BitstreamError(f"native payload codes {channels} channels, the header's shape {shape} has "
                                 f"{shape[axis]} on its channel axis")
        step = np.float32(step)
        if not (np.isfinite(step) and step > 0):
            raise BitstreamError(f"native payload has an invalid quantizer step {float(step)!r}")
        count = int(np.prod(shape))
        tokens = count // channels if channels else 0
        body = zstd_decompress_bounded(payload[HEADER.size:], 4 * channels + width * count)
        means = np.frombuffer(body, dtype="<i4", count=channels).astype(np.int64)
        planes = np.frombuffer(body, dtype=np.uint8, offset=4 * channels).reshape(width, count)
        if width == 1:
            zz = planes.reshape(channels, tokens)
        else:
            zz = np.ascontiguousarray(planes.T).view(f"<u{width}").reshape(channels, tokens)
        out = self._to_layout(_dequantize(zz, means, step), shape, axis, np.dtype(dtype))
        verify_digest(out, coded.digest, "codec native", coded.header)
        return out
