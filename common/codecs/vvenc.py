"""``vvenc``: VVC intra through ffmpeg's libvvenc, decoded by ffmpeg's native VVC decoder.

libvvenc takes 4:2:0 10-bit input only: the packed frame is the luma plane and
both chroma planes are flat (mid-grey), which costs almost no bits. The intra
QP offset is 0 and perceptual QP adaptation is off so a QP means what it means
for VTM. The payload is a standard VVC (Annex B) bitstream.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs._external import (
    check_decoded_size,
    ffmpeg_has,
    ffmpeg_path,
    pad_frame,
    padded_size,
    run_program,
)
from splitfc.common.codecs.base import FrameCodec
from splitfc.common.errors import SplitfcError
from splitfc.common.settings import codec_settings
from splitfc.common.specs import TruncationColumn

# VVC codes pictures in multiples of the minimum CU size; pad and crop ourselves.
PAD_MULTIPLE = 8
# Encoders refuse very small pictures (x265 below 16 rows, VVenC at 8x16): pad up to this.
MIN_SIZE = 32
MID_GREY_10BIT = 512


@cache
def _vvc_support() -> str | None:
    try:
        if not ffmpeg_has("libvvenc", "encoders"):
            return "this ffmpeg has no libvvenc encoder"
        if not ffmpeg_has("vvc", "decoders"):
            return "this ffmpeg has no VVC decoder"
    except SplitfcError as exc:
        return str(exc)
    return None


def yuv420_from_luma(luma: np.ndarray) -> bytes:
    """A 4:2:0 10-bit little-endian frame whose luma is ``luma`` and whose chroma is flat."""
    h, w = luma.shape
    chroma = np.full((h // 2) * (w // 2), MID_GREY_10BIT, dtype="<u2").tobytes()
    return luma.astype("<u2").tobytes() + chroma + chroma


@register_codec
class VvencCodec(FrameCodec):
    """VVC intra (VVenC) on the packed 10-bit frame; rate = QP."""

    name: ClassVar[str] = "vvenc"
    description: ClassVar[str] = "VVC intra via ffmpeg libvvenc (4:2:0 10-bit, flat chroma), native VVC decoder"
    truncation: ClassVar[TruncationColumn | None] = TruncationColumn.VTM
    rate_name: ClassVar[str] = "qp"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42)
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _vvc_support()

    def encode_frame(self, frame: np.ndarray, rate: int) -> tuple[bytes, dict[str, str]]:
        padded = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE)
        h, w = padded.shape
        preset = codec_settings().vvenc_preset
        args = [
            ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", "yuv420p10le", "-s", f"{w}x{h}", "-i", "pipe:0",
            "-frames:v", "1", "-c:v", "libvvenc", "-preset", preset, "-qp", str(rate), "-qpa", "0",
            "-vvenc-params", "IntraQPOffset=0", "-threads", "1", "-f", "vvc", "pipe:1",
        ]
        payload = run_program(args, "vvenc encode", stdin=yuv420_from_luma(padded))
        return payload, {"preset": preset}

    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str]
    ) -> np.ndarray:
        ph, pw = padded_size(height, PAD_MULTIPLE, MIN_SIZE), padded_size(width, PAD_MULTIPLE, MIN_SIZE)
        args = [
            ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "vvc", "-i", "pipe:0", "-frames:v", "1",
            "-f", "rawvideo", "-pix_fmt", "yuv420p10le", "pipe:1",
        ]
        out = run_program(args, "vvc decode", stdin=payload)
        luma_bytes = ph * pw * 2
        check_decoded_size(out, luma_bytes * 3 // 2, "vvc decode")
        luma = np.frombuffer(out, dtype="<u2", count=ph * pw).reshape(ph, pw)
        return luma[:height, :width].astype(np.uint16)
