"""``hevc``: HEVC intra through ffmpeg's libx265 on a gray10 (4:0:0 10-bit) frame.

Adaptive quantization is off so the QP is the QP, and ``info=0`` keeps x265's
~2 kB encoder-settings SEI out of the payload (it would be counted in BPFP).
Encoding runs in-process through PyAV's libx265 with the same options (``_pyav``) unless
``SPLITFC_FFMPEG_BACKEND=subprocess``: PyAV's x265 build writes other bytes of the same length,
and they decode to the same picture bit for bit (tests/test_codec_determinism.py).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs._ffmpeg import MIN_SIZE, PAD_MULTIPLE, FfmpegIntraCodec
from splitfc.common.codecs._pyav import pyav_encode_gray10, pyav_has
from splitfc.common.codecs.base import CodedFrame
from splitfc.common.preprocess import pad_frame
from splitfc.common.settings import codec_settings
from splitfc.common.specs import SplitSpec


@register_codec
class HevcCodec(FfmpegIntraCodec):
    """HEVC intra (x265, gray10) on the packed 10-bit frame; rate = QP."""

    name: ClassVar[str] = "hevc"
    description: ClassVar[str] = "HEVC intra via ffmpeg libx265 (gray10), native HEVC decoder"
    encoder: ClassVar[str] = "libx265"
    decoder: ClassVar[str] = "hevc"
    pix_fmt: ClassVar[str] = "gray10le"
    rate_bounds: ClassVar[tuple[int, int]] = (0, 51)
    min_payload_bits_per_element: ClassVar[float] = 1 / 4096  # x265 flat frame, QP 51: 1.7e-3 (docs/hardening.md)

    def encoder_options(self, rate: int) -> tuple[list[str], dict[str, str]]:
        preset = codec_settings().x265_preset
        params = f"qp={rate}:keyint=1:aq-mode=0:info=0:log-level=error:pools=1:frame-threads=1"
        return ["-preset", preset, "-x265-params", params], {"preset": preset}

    def encode_frame(self, frame: np.ndarray, rate: int, spec: SplitSpec | None = None) -> CodedFrame:
        if codec_settings().ffmpeg_backend != "pyav" or not pyav_has(self.encoder, "w"):
            return super().encode_frame(frame, rate, spec)
        options, extra = self.encoder_options(rate)
        avoptions = {options[i].lstrip("-"): options[i + 1] for i in range(0, len(options), 2)}
        padded = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE)
        return CodedFrame(pyav_encode_gray10(padded, self.encoder, avoptions, f"{self.name} encode"), extra)
