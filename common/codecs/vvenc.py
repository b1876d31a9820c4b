"""``vvenc``: VVC intra through ffmpeg's libvvenc, decoded by ffmpeg's native VVC decoder.

libvvenc takes 4:2:0 10-bit input only: the packed frame is the luma plane and
both chroma planes are flat (mid-grey), which costs almost no bits. The intra
QP offset is 0 and perceptual QP adaptation is off so a QP means what it means
for VTM. The payload is a standard VVC (Annex B) bitstream.

Decoding uses ffmpeg's native VVC decoder with one thread (``-threads 1`` in the
shared ``decode_padded``), or VTM's DecoderAppStatic with ``SPLITFC_VVC_DECODER=vtm``.
ffmpeg 9.0.2's VVC decoder is not deterministic with its default threading: on
tiny DINOv2 Seg frames (130x128, padded to 136x128; medium preset, 128x128
CTUs) 20 decodes of one payload gave 2 to 6 different pictures, and 15 of 20
frames (4 samples x 5 QPs) differed from VTM-23.3's decode by up to 800 levels
from the second CTU row on. It is a race in the decoder's threads, not a coding
tool (turning tools off one at a time did not remove it): with one thread,
ffmpeg's decode equals VTM's bit for bit on all of those frames.
tests/test_codec_determinism.py checks both (the VTM part where VTM is installed).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

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
    min_payload_bits_per_element: ClassVar[float] = 1 / 32768  # flat, QP 63, preset slower: 1.5e-4 (docs/hardening.md)

    def encoder_options(self, rate: int) -> tuple[list[str], dict[str, str]]:
        preset = codec_settings().vvenc_preset
        options = ["-preset", preset, "-qp", str(rate), "-qpa", "0", "-vvenc-params", "IntraQPOffset=0",
                   "-threads", "1"]
        return options, {"preset": preset}

    def decode_padded(self, payload: bytes, height: int, width: int) -> np.ndarray:
        if codec_settings().vvc_decoder == "vtm":
            from splitfc.common.codecs.vtm import vtm_decode_frame

            return vtm_decode_frame(payload, height, width, self.bit_depth)
        return super().decode_padded(payload, height, width)
