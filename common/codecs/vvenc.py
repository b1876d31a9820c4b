"""``vvenc``: VVC intra through ffmpeg's libvvenc, decoded by ffmpeg's native VVC decoder.

libvvenc takes 4:2:0 10-bit input only: the packed frame is the luma plane and
both chroma planes are flat (mid-grey), which costs almost no bits. The intra
QP offset is 0 and perceptual QP adaptation is off so a QP means what it means
for VTM. The payload is a standard VVC (Annex B) bitstream.
"""

from __future__ import annotations

from typing import ClassVar

from splitfc.common.codecs import register_codec
from splitfc.common.codecs._ffmpeg import FfmpegIntraCodec
from splitfc.common.settings import codec_settings


@register_codec
class VvencCodec(FfmpegIntraCodec):
    """VVC intra (VVenC) on the packed 10-bit frame; rate = QP."""

    name: ClassVar[str] = "vvenc"
    description: ClassVar[str] = "VVC intra via ffmpeg libvvenc (4:2:0 10-bit, flat chroma), native VVC decoder"
    encoder: ClassVar[str] = "libvvenc"
    decoder: ClassVar[str] = "vvc"
    pix_fmt: ClassVar[str] = "yuv420p10le"
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)

    def encoder_options(self, rate: int) -> tuple[list[str], dict[str, str]]:
        preset = codec_settings().vvenc_preset
        options = ["-preset", preset, "-qp", str(rate), "-qpa", "0", "-vvenc-params", "IntraQPOffset=0",
                   "-threads", "1"]
        return options, {"preset": preset}
