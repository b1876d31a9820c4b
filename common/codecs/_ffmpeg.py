"""Intra coding of the packed frame through ffmpeg: the shared part of ``vvenc`` and ``hevc``.

A subclass names its encoder, decoder and pixel format and adds its encoder
options; frames are padded (edge replication) to what the encoders accept and
cropped back after decoding. ffmpeg reads and writes pipes: no temporary files.

Decoding runs single-threaded (`DECODE_ARGS`): ffmpeg 9.0.2's native VVC decoder is
not deterministic with its default threading (see ``vvenc``: 20 decodes of one tiny
Seg payload gave up to 6 different pictures); with one thread it matches VTM's
decoder bit for bit. HEVC decodes the same way, for the same guarantee. Both decoders run in-process through PyAV
(``_pyav``, the same FFmpeg decoders, one thread, no process start) unless
``SPLITFC_FFMPEG_BACKEND=subprocess``; the decoded pictures are the same bit for bit
(tests/test_codec_determinism.py). The
encoders are single-threaded too (each subclass's options), so a payload and its
reconstruction depend on the input alone.
"""

from __future__ import annotations

from abc import abstractmethod
from functools import cache
from typing import ClassVar

import numpy as np

from splitfc.common.codecs._external import check_decoded_size, ffmpeg_has, ffmpeg_path, run_program
from splitfc.common.codecs._pyav import pyav_decode_luma, pyav_has
from splitfc.common.codecs.base import CodedFrame, FrameCodec
from splitfc.common.errors import SplitfcError
from splitfc.common.preprocess import pad_frame, padded_size
from splitfc.common.settings import codec_settings
from splitfc.common.specs import SplitSpec, TruncationColumn

PAD_MULTIPLE = 8
# Encoders refuse very small pictures (x265 below 16 rows, VVenC at 8x16): pad up to this.
MIN_SIZE = 32
MID_GREY_10BIT = 512
_FFMPEG = ("-hide_banner", "-loglevel", "error", "-nostdin")
DECODE_ARGS = ("-threads", "1")
"""Decoder options (before ``-i``): one decoding thread, for a deterministic reconstruction."""


@cache
def ffmpeg_support(encoder: str, decoder: str) -> str | None:
    """None when ffmpeg has both ``encoder`` and ``decoder``, else what is missing."""
    try:
        if not ffmpeg_has(encoder, "encoders"):
            return f"this ffmpeg has no {encoder} encoder"
        if not ffmpeg_has(decoder, "decoders"):
            return f"this ffmpeg has no {decoder} decoder"
    except SplitfcError as exc:
        return str(exc)
    return None


class FfmpegIntraCodec(FrameCodec):
    """One intra frame through an ffmpeg encoder and back through an ffmpeg decoder; rate = QP."""

    encoder: ClassVar[str]
    """ffmpeg encoder name (``-c:v``)."""
    decoder: ClassVar[str]
    """ffmpeg decoder name, also the elementary stream format (``-f``)."""
    pix_fmt: ClassVar[str]
    """Raw frame format both ways: ``gray10le`` or ``yuv420p10le`` (flat chroma)."""
    truncation: ClassVar[TruncationColumn | None] = TruncationColumn.VTM
    rate_name: ClassVar[str] = "qp"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return ffmpeg_support(cls.encoder, cls.decoder)

    @abstractmethod
    def encoder_options(self, rate: int) -> tuple[list[str], dict[str, str]]:
        """Encoder arguments for ``rate`` and the extras recorded in the bitstream."""

    def _raw_frame(self, luma: np.ndarray) -> bytes:
        data = luma.astype("<u2").tobytes()
        if self.pix_fmt == "yuv420p10le":
            h, w = luma.shape
            chroma = np.full((h // 2) * (w // 2), MID_GREY_10BIT, dtype="<u2").tobytes()
            data += chroma + chroma
        return data

    def encode_frame(self, frame: np.ndarray, rate: int, spec: SplitSpec | None = None) -> CodedFrame:
        padded = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE)
        h, w = padded.shape
        options, extra = self.encoder_options(rate)
        args = [
            ffmpeg_path(), *_FFMPEG, "-f", "rawvideo", "-pix_fmt", self.pix_fmt, "-s", f"{w}x{h}", "-i", "pipe:0",
            "-frames:v", "1", "-c:v", self.encoder, *options, "-f", self.decoder, "pipe:1",
        ]
        return CodedFrame(run_program(args, f"{self.name} encode", stdin=self._raw_frame(padded)), extra)

    def decode_padded(self, payload: bytes, height: int, width: int) -> np.ndarray:
        """Decode the full padded picture (``height`` x ``width``) with ffmpeg."""
        if codec_settings().ffmpeg_backend == "pyav" and pyav_has(self.decoder):
            return pyav_decode_luma(payload, self.decoder, self.pix_fmt, height, width, f"{self.name} decode")
        args = [
            ffmpeg_path(), *_FFMPEG, *DECODE_ARGS, "-f", self.decoder, "-i", "pipe:0", "-frames:v", "1",
            "-f", "rawvideo", "-pix_fmt", self.pix_fmt, "pipe:1",
        ]
        out = run_program(args, f"{self.name} decode", stdin=payload)
        luma = height * width * 2
        check_decoded_size(out, luma * 3 // 2 if self.pix_fmt == "yuv420p10le" else luma, f"{self.name} decode")
        return np.frombuffer(out, dtype="<u2", count=height * width).reshape(height, width)

    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str],
        spec: SplitSpec | None = None,
    ) -> np.ndarray:
        ph, pw = padded_size(height, PAD_MULTIPLE, MIN_SIZE), padded_size(width, PAD_MULTIPLE, MIN_SIZE)
        return self.decode_padded(payload, ph, pw)[:height, :width].astype(np.uint16)
