"""``raw``: the uncompressed reference (32 BPFP for float32), optionally zstd.

Lossless when the stored dtype is the input dtype. ``store_dtype`` float16 or
bfloat16 halves the rate at a (small) loss; values the stored dtype cannot hold
(beyond +-65504 for float16) are refused with a `NonFiniteError`, never turned
into infinities. The integrity digest covers the stored (uncompressed) bytes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs.base import Codec, Encoded
from splitfc.common.errors import BitstreamError, NonFiniteError
from splitfc.common.integrity import content_digest, verify_digest
from splitfc.common.specs import SplitSpec
from splitfc.common.untrusted import quote

STORE_DTYPES = ("float32", "float16", "bfloat16")
# Largest finite magnitude of each stored dtype (bfloat16: (2 - 2**-7) * 2**127).
STORE_MAX = {"float32": float(np.finfo(np.float32).max), "float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def check_storable(x: np.ndarray, store_dtype: str) -> None:
    """Raise `NonFiniteError` if ``x`` holds values ``store_dtype`` cannot hold (they would become inf)."""
    if x.size == 0:
        return
    largest = float(np.max(np.abs(x)))
    if not np.isfinite(largest):
        raise NonFiniteError("features contain NaN or infinite values")
    # float16 rounds to inf from 65520 on; anything beyond the largest finite value is refused.
    if largest > STORE_MAX[store_dtype]:
        raise NonFiniteError(
            f"raw {store_dtype} cannot hold the largest feature magnitude {largest:.6g} "
            f"(max {STORE_MAX[store_dtype]:.6g}); store float32 instead"
        )


def _to_store(x: np.ndarray, store_dtype: str) -> bytes:
    if store_dtype == "bfloat16":
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return np.ascontiguousarray(x, dtype=np.dtype(store_dtype).newbyteorder("<")).tobytes()


def _from_store(data: bytes, store_dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if store_dtype == "bfloat16":
        import torch

        bits = np.frombuffer(data, dtype="<i2", count=count).astype(np.int16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16).to(torch.float32).numpy().reshape(shape)
    return np.frombuffer(data, dtype=np.dtype(store_dtype).newbyteorder("<"), count=count).reshape(shape)


ZSTD_MAX_BLOCK = 128 * 1024
"""Largest zstd block (decompressed): each costs at least 4 payload bytes (an RLE block)."""
_READ_PIECE = 1 << 24


def zstd_decompress_bounded(payload: bytes, expected: int) -> bytes:
    """Decompress one zstd frame that must hold ``expected`` bytes, producing at most ``expected + 1``.

    The frame's declared content size is checked before anything is allocated (zstandard honours
    ``max_output_size`` only for frames *without* a declared size: a 32 KB frame declaring 1 GiB was
    decompressed whole); either way the output is read through a bounded stream reader with a window
    no larger than the expected content needs (at least 8 MiB, what streaming encoders use).
    """
    import zstandard

    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        raise BitstreamError("raw zstd payload is corrupt (no zstd frame header)") from None
    if declared not in (-1, expected):  # -1: the frame does not say
        raise BitstreamError(f"raw zstd frame declares {declared} bytes, the tensor needs {expected}")
    # zstd encoders that do not know the size stream with windows up to 8 MiB (level 19): accept those.
    window = 1 << max(23, min(27, max(expected, 1).bit_length()))
    out: list[bytes] = []
    size = 0
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=window).stream_reader(payload, read_across_frames=False)
        with reader:
            while size <= expected:
                piece = reader.read(min(_READ_PIECE, expected + 1 - size))
                if not piece:
                    break
                out.append(piece)
                size += len(piece)
    except zstandard.ZstdError as exc:
        raise BitstreamError(f"raw zstd payload is corrupt: {exc}") from None
    if size != expected:
        got = f"more than {expected}" if size > expected else str(size)
        raise BitstreamError(f"raw zstd payload decompresses to {got} bytes, the tensor needs {expected}")
    return b"".join(out) if len(out) != 1 else out[0]


@register_codec
class RawCodec(Codec):
    """Features as little-endian floats; ``rate`` is ignored (use 0)."""

    name: ClassVar[str] = "raw"
    description: ClassVar[str] = "uncompressed float32/float16/bfloat16, optional zstd (lossless reference)"
    rate_name: ClassVar[str] = "none"
    rates: ClassVar[tuple[int, ...]] = (0,)
    rate_bounds: ClassVar[tuple[int, int]] = (0, 0)
    min_payload_bits_per_element: ClassVar[float] = 4 * 8 / (ZSTD_MAX_BLOCK / 2)
    """Exact: zstd's densest coding is a 4-byte RLE block per 128 KiB, i.e. per 65536 float16/bfloat16
    elements (1/2048 bit each); uncompressed payloads carry 16 or 32 bits per element."""

    def __init__(self, store_dtype: str | None = None, zstd_level: int = 0) -> None:
        if store_dtype is not None and store_dtype not in STORE_DTYPES:
            raise ValueError(f"raw store dtype must be one of {', '.join(STORE_DTYPES)}, got {store_dtype!r}")
        self.store_dtype = store_dtype
        self.zstd_level = zstd_level

    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        store = self.store_dtype or (features.dtype.name if features.dtype.name in STORE_DTYPES else "float32")
        check_storable(features, store)
        data = _to_store(features, store)
        digest = content_digest(data)
        extra = {"store_dtype": store}
        if self.zstd_level > 0:
            import zstandard

            data = zstandard.ZstdCompressor(level=self.zstd_level).compress(data)
            extra["compression"] = "zstd"
        return Encoded(data, None, extra, digest)

    def decode(
        self, coded: Encoded, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype, rate: int,
    ) -> np.ndarray:
        payload, extra = coded.payload, coded.extra
        store = extra.get("store_dtype", "float32")
        if store not in STORE_DTYPES:
            raise BitstreamError(f"raw payload has unknown store dtype {quote(store)}")
        expected = int(np.prod(shape)) * (4 if store == "float32" else 2)
        compression = extra.get("compression", "none")
        if compression == "zstd":
            payload = zstd_decompress_bounded(payload, expected)
        elif compression != "none":
            raise BitstreamError(f"raw payload has unknown compression {quote(compression)}")
        if len(payload) != expected:
            raise BitstreamError(f"raw payload has {len(payload)} bytes, shape {shape} of {store} needs {expected}")
        verify_digest(payload, coded.digest, "codec raw", coded.header)
        return _from_store(payload, store, shape).astype(dtype)
