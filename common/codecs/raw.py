"""``raw``: the uncompressed reference (32 BPFP for float32), optionally zstd.

Lossless when the stored dtype is the input dtype. ``store_dtype`` float16 or
bfloat16 halves the rate at a (small) loss.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs.base import Codec, Encoded, FrameInfo
from splitfc.common.specs import SplitSpec

STORE_DTYPES = ("float32", "float16", "bfloat16")


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


@register_codec
class RawCodec(Codec):
    """Features as little-endian floats; ``rate`` is ignored (use 0)."""

    name: ClassVar[str] = "raw"
    description: ClassVar[str] = "uncompressed float32/float16/bfloat16, optional zstd (lossless reference)"
    rate_name: ClassVar[str] = "none"
    rates: ClassVar[tuple[int, ...]] = (0,)

    def __init__(self, store_dtype: str | None = None, zstd_level: int = 0) -> None:
        if store_dtype is not None and store_dtype not in STORE_DTYPES:
            raise ValueError(f"raw store dtype must be one of {', '.join(STORE_DTYPES)}, got {store_dtype!r}")
        self.store_dtype = store_dtype
        self.zstd_level = zstd_level

    def encode(self, features: np.ndarray, spec: SplitSpec, rate: int) -> Encoded:
        store = self.store_dtype or (features.dtype.name if features.dtype.name in STORE_DTYPES else "float32")
        data = _to_store(features, store)
        extra = {"store_dtype": store}
        if self.zstd_level > 0:
            import zstandard

            data = zstandard.ZstdCompressor(level=self.zstd_level).compress(data)
            extra["compression"] = "zstd"
        return Encoded(data, None, extra)

    def decode(
        self, payload: bytes, spec: SplitSpec, shape: tuple[int, ...], dtype: np.dtype,
        frame: FrameInfo | None, rate: int, extra: dict[str, str],
    ) -> np.ndarray:
        store = extra.get("store_dtype", "float32")
        if store not in STORE_DTYPES:
            raise ValueError(f"raw payload has unknown store dtype {store!r}")
        expected = int(np.prod(shape)) * (4 if store == "float32" else 2)
        compression = extra.get("compression", "none")
        if compression == "zstd":
            import zstandard

            try:
                payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=expected)
            except zstandard.ZstdError as exc:
                raise ValueError(f"raw zstd payload is corrupt: {exc}") from None
        elif compression != "none":
            raise ValueError(f"raw payload has unknown compression {compression!r}")
        if len(payload) != expected:
            raise ValueError(f"raw payload has {len(payload)} bytes, shape {shape} of {store} needs {expected}")
        return _from_store(payload, store, shape).astype(dtype)
