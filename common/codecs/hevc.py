"""``hevc``: HEVC intra through ffmpeg's libx265 on a gray10 (4:0:0 10-bit) frame."""

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

PAD_MULTIPLE = 8
# Encoders refuse very small pictures (x265 below 16 rows, VVenC at 8x16): pad up to this.
MIN_SIZE = 32


@cache
def _hevc_support() -> str | None:
    try:
        if not ffmpeg_has("libx265", "encoders"):
            return "this ffmpeg has no libx265 encoder"
        if not ffmpeg_has("hevc", "decoders"):
            return "this ffmpeg has no HEVC decoder"
    except SplitfcError as exc:
        return str(exc)
    return None


@register_codec
class HevcCodec(FrameCodec):
    """HEVC intra (x265, gray10) on the packed 10-bit frame; rate = QP."""

    name: ClassVar[str] = "hevc"
    description: ClassVar[str] = "HEVC intra via ffmpeg libx265 (gray10), native HEVC decoder"
    truncation: ClassVar[TruncationColumn | None] = TruncationColumn.VTM
    rate_name: ClassVar[str] = "qp"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42)
    rate_bounds: ClassVar[tuple[int, int]] = (0, 51)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _hevc_support()

    def encode_frame(self, frame: np.ndarray, rate: int) -> tuple[bytes, dict[str, str]]:
        padded = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE)
        h, w = padded.shape
        preset = codec_settings().x265_preset
        params = f"qp={rate}:keyint=1:aq-mode=0:info=0:log-level=error:pools=1:frame-threads=1"
        args = [
            ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", "gray10le", "-s", f"{w}x{h}", "-i", "pipe:0",
            "-frames:v", "1", "-c:v", "libx265", "-preset", preset, "-x265-params", params,
            "-f", "hevc", "pipe:1",
        ]
        payload = run_program(args, "hevc encode", stdin=padded.astype("<u2").tobytes())
        return payload, {"preset": preset}

    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str]
    ) -> np.ndarray:
        ph, pw = padded_size(height, PAD_MULTIPLE, MIN_SIZE), padded_size(width, PAD_MULTIPLE, MIN_SIZE)
        args = [
            ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "hevc", "-i", "pipe:0", "-frames:v", "1",
            "-f", "rawvideo", "-pix_fmt", "gray10le", "pipe:1",
        ]
        out = run_program(args, "hevc decode", stdin=payload)
        check_decoded_size(out, ph * pw * 2, "hevc decode")
        return np.frombuffer(out, dtype="<u2").reshape(ph, pw)[:height, :width].astype(np.uint16)
