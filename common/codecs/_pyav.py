"""In-process decoding (and HEVC encoding) of one intra picture through PyAV's bundled FFmpeg.

The same FFmpeg decoders as the subprocess path (``_ffmpeg``: native ``hevc`` and ``vvc``) without a
process start per picture (about 15-20 ms here). Decoding is single-threaded (``thread_count=1``,
``thread_type`` NONE), as the subprocess path's ``-threads 1``: FFmpeg's VVC decoder races with its
default threading. Only the first picture is decoded; its pixel format and size must be what the
caller expects, else `CodecError` (the subprocess path would convert a foreign format; the integrity
digest refuses such content either way). ``SPLITFC_FFMPEG_BACKEND=subprocess`` turns this off.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np

from splitfc.common.errors import CodecError


@cache
def pyav_has(codec: str, mode: str = "r") -> bool:
    """Whether the installed PyAV (if any) has ``codec`` for decoding (``r``) or encoding (``w``)."""
    try:
        import av
    except ImportError:
        return False
    try:
        av.CodecContext.create(codec, mode)
    except Exception:
        return False
    return True


def _plane_u16(plane: object, height: int, width: int) -> np.ndarray:
    """One 16-bit plane as a ``height`` x ``width`` uint16 array (row padding of the line size dropped)."""
    line = plane.line_size  # type: ignore[attr-defined]
    rows = np.frombuffer(memoryview(plane), dtype="<u2", count=height * line // 2).reshape(height, line // 2)  # type: ignore[arg-type]
    return np.array(rows[:, :width], dtype=np.uint16)


def pyav_decode_luma(payload: bytes, decoder: str, pix_fmt: str, height: int, width: int, what: str) -> np.ndarray:
    """Decode the first picture of an Annex B ``payload`` with ``decoder`` -> its luma plane.

    Returns ``height`` x ``width`` uint16 (10-bit levels). Raises `CodecError` when the payload holds no
    picture, does not decode, or decodes to another pixel format or size than ``pix_fmt`` at
    ``height`` x ``width``.
    """
    import av

    ctx = av.CodecContext.create(decoder, "r")
    ctx.thread_count = 1
    ctx.thread_type = "NONE"
    frame = None
    try:
        packets = ctx.parse(payload) + ctx.parse(None)
        for packet in [*packets, None]:
            frames = ctx.decode(packet)
            if frames:
                frame = frames[0]
                break
    except (av.FFmpegError, ValueError) as exc:
        raise CodecError(f"{what} failed: {exc}") from None
    if frame is None:
        raise CodecError(f"{what} failed: the payload holds no picture")
    if frame.format.name != pix_fmt or (frame.height, frame.width) != (height, width):
        raise CodecError(
            f"{what} produced a {frame.width}x{frame.height} {frame.format.name} picture, "
            f"expected {width}x{height} {pix_fmt}"
        )
    return _plane_u16(frame.planes[0], height, width)


def pyav_encode_gray10(frame: np.ndarray, encoder: str, options: dict[str, str], what: str) -> bytes:
    """Encode one ``H`` x ``W`` uint16 (10-bit) frame as a gray10le intra picture -> Annex B bytes.

    ``options`` are the encoder's AVOptions (for libx265: ``preset``, ``x265-params``). Raises `CodecError`.
    """
    import av

    h, w = frame.shape
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "gray10le"
    ctx.time_base = Fraction(1, 25)
    ctx.thread_count = 1
    ctx.options = dict(options)
    picture = av.VideoFrame(w, h, "gray10le")
    line = picture.planes[0].line_size // 2
    padded = np.zeros((h, line), dtype="<u2")
    padded[:, :w] = frame
    picture.planes[0].update(padded.tobytes())
    picture.pts = 0
    try:
        out = b"".join(bytes(p) for p in [*ctx.encode(picture), *ctx.encode(None)])
    except (av.FFmpegError, ValueError) as exc:
        raise CodecError(f"{what} failed: {exc}") from None
    return out
