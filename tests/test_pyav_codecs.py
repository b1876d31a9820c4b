"""In-process HEVC/VVC through PyAV against the ffmpeg subprocess path: the same pictures, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from splitfc.common.codecs import CODECS
from splitfc.common.codecs._ffmpeg import MIN_SIZE, PAD_MULTIPLE
from splitfc.common.errors import CodecError
from splitfc.common.preprocess import pad_frame

pytest.importorskip("av")
from splitfc.common.codecs._pyav import pyav_decode_luma, pyav_encode_gray10, pyav_has


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    ramp = np.clip(np.arange(128)[None, :] * 8 + np.arange(130)[:, None] * 2, 0, 1023)
    return [
        rng.integers(0, 1024, (130, 128)).astype(np.uint16),
        ramp.astype(np.uint16),
        np.clip(ramp + rng.integers(-40, 40, ramp.shape), 0, 1023).astype(np.uint16),
    ]


@pytest.mark.parametrize("name", ["hevc", "vvenc"])
def test_pyav_decode_equals_subprocess(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = CODECS[name]()
    if codec.unavailable_reason() is not None or not pyav_has(codec.decoder):
        pytest.skip(f"{name} not available")
    for frame in _frames():
        for qp in (22, 37):
            payload = codec.encode_frame(frame, qp).payload
            h, w = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE).shape
            ours = pyav_decode_luma(payload, codec.decoder, codec.pix_fmt, h, w, name)
            monkeypatch.setenv("SPLITFC_FFMPEG_BACKEND", "subprocess")
            from splitfc.common.settings import codec_settings

            codec_settings.cache_clear()
            try:
                theirs = codec.decode_padded(payload, h, w)
            finally:
                monkeypatch.delenv("SPLITFC_FFMPEG_BACKEND")
                codec_settings.cache_clear()
            assert ours.dtype == np.uint16 and ours.shape == (h, w)
            assert np.array_equal(ours, theirs), (name, qp)
            assert np.array_equal(codec.decode_padded(payload, h, w), theirs)  # the default path is PyAV


def test_pyav_hevc_encode_decodes_like_subprocess_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = CODECS["hevc"]()
    if codec.unavailable_reason() is not None or not pyav_has("libx265", "w"):
        pytest.skip("hevc not available")
    from splitfc.common.settings import codec_settings

    for frame in _frames():
        padded = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE)
        h, w = padded.shape
        options, _ = codec.encoder_options(32)
        inproc = pyav_encode_gray10(padded, "libx265", {"preset": options[1], "x265-params": options[3]}, "hevc")
        monkeypatch.setenv("SPLITFC_FFMPEG_BACKEND", "subprocess")
        codec_settings.cache_clear()
        try:
            sub = codec.encode_frame(frame, 32).payload
            sub_pic = codec.decode_padded(sub, h, w)
            inproc_pic = codec.decode_padded(inproc, h, w)
        finally:
            monkeypatch.delenv("SPLITFC_FFMPEG_BACKEND")
            codec_settings.cache_clear()
        assert len(inproc) == len(sub)
        assert np.array_equal(inproc_pic, sub_pic)


def test_pyav_decode_refuses_garbage_and_wrong_size() -> None:
    codec = CODECS["hevc"]()
    if codec.unavailable_reason() is not None or not pyav_has("hevc"):
        pytest.skip("hevc not available")
    frame = _frames()[1]
    payload = codec.encode_frame(frame, 32).payload
    h, w = pad_frame(frame, PAD_MULTIPLE, MIN_SIZE).shape
    with pytest.raises(CodecError, match="expected"):
        pyav_decode_luma(payload, "hevc", "gray10le", h + 8, w, "hevc decode")
    with pytest.raises(CodecError):
        pyav_decode_luma(b"\x00\x01garbage" * 10, "hevc", "gray10le", h, w, "hevc decode")
