"""``hevc``: HEVC intra through ffmpeg's libx265 on a gray10 (4:0:0 10-bit) frame.

Adaptive quantization is off so the QP is the QP, and ``info=0`` keeps x265's
~2 kB encoder-settings SEI out of the payload (it would be counted in BPFP).
"""

from __future__ import annotations

from typing import ClassVar

from splitfc.common.codecs import register_codec
from splitfc.common.codecs._ffmpeg import FfmpegIntraCodec
from splitfc.common.settings import codec_settings


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
