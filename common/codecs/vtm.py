"""``vtm``: the paper's handcrafted baseline, VTM-23.3 intra (paper Section 6.1.2).

Runs ``EncoderAppStatic``/``DecoderAppStatic`` (or ``EncoderApp``/``DecoderApp``,
as some builds name them) from ``SPLITFC_VTM_DIR`` or PATH with
``encoder_intra_vtm.cfg``, InputChromaFormat 400, 10-bit input, internal
and output depth, ConformanceWindowMode 1 (VTM pads sizes such as 257 itself).
VTM is in no package registry: build it yourself and point the settings at it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from splitfc.common.codecs import register_codec
from splitfc.common.codecs._external import run_program
from splitfc.common.codecs.base import CodedFrame, FrameCodec
from splitfc.common.errors import CodecError, CodecUnavailableError
from splitfc.common.settings import codec_settings
from splitfc.common.specs import SplitSpec, TruncationColumn

ENCODER = "EncoderAppStatic"
DECODER = "DecoderAppStatic"
ALIASES = {ENCODER: ("EncoderAppStatic", "EncoderApp"), DECODER: ("DecoderAppStatic", "DecoderApp")}
"""Names a VTM build gives its binaries, preferred first (CMake builds write ``*Static``, others drop it)."""
CONFIG = "encoder_intra_vtm.cfg"
INSTALL_HINT = (
    "build VTM-23.3 (https://vcgit.hhi.fraunhofer.de/jvet/VVCSoftware_VTM) and set SPLITFC_VTM_DIR to the folder "
    f"holding {ENCODER} and {DECODER} (or EncoderApp and DecoderApp; or put them on PATH), and SPLITFC_VTM_CONFIG "
    f"to {CONFIG} if it is not in that folder or ../cfg"
)


def _find_binary(name: str) -> Path | None:
    """``name`` or its alias (`ALIASES`) in SPLITFC_VTM_DIR, else on PATH; the first found wins."""
    folder = codec_settings().vtm_dir
    for candidate_name in ALIASES.get(name, (name,)):
        if folder is not None:
            candidate = Path(folder) / candidate_name
            if candidate.is_file():
                return candidate
            continue
        found = shutil.which(candidate_name)
        if found:
            return Path(found)
    return None


def _find_config() -> Path | None:
    settings = codec_settings()
    if settings.vtm_config is not None:
        return settings.vtm_config if settings.vtm_config.is_file() else None
    encoder = _find_binary(ENCODER)
    if encoder is None:
        return None
    for candidate in (encoder.parent / CONFIG, encoder.parent.parent / "cfg" / CONFIG):
        if candidate.is_file():
            return candidate
    return None


def vtm_tools() -> tuple[Path, Path, Path]:
    """Encoder, decoder and config paths; `CodecUnavailableError` says exactly what is missing."""
    encoder, decoder, config = _find_binary(ENCODER), _find_binary(DECODER), _find_config()
    missing = [n for n, p in ((ENCODER, encoder), (DECODER, decoder), (CONFIG, config)) if p is None]
    if missing:
        where = f"in SPLITFC_VTM_DIR={codec_settings().vtm_dir}" if codec_settings().vtm_dir else "on PATH"
        raise CodecUnavailableError(f"{', '.join(missing)} not found {where}; {INSTALL_HINT}")
    assert encoder and decoder and config
    return encoder, decoder, config


@register_codec
class VtmCodec(FrameCodec):
    """VTM-23.3 intra on the packed 10-bit 4:0:0 frame; rate = QP."""

    name: ClassVar[str] = "vtm"
    description: ClassVar[str] = "VTM-23.3 intra (encoder_intra_vtm.cfg, 4:0:0 10-bit), the paper's baseline"
    truncation: ClassVar[TruncationColumn | None] = TruncationColumn.VTM
    rate_name: ClassVar[str] = "qp"
    rates: ClassVar[tuple[int, ...]] = (22, 27, 32, 37, 42)
    rate_bounds: ClassVar[tuple[int, int]] = (0, 63)
    min_payload_bits_per_element: ClassVar[float] = 1 / 32768  # flat 8192x4096, QP 63: 7.3e-5 (docs/hardening.md)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            vtm_tools()
        except CodecUnavailableError as exc:
            return str(exc)
        return None

    def encode_frame(self, frame: np.ndarray, rate: int, spec: SplitSpec | None = None) -> CodedFrame:
        encoder, _, config = vtm_tools()
        h, w = frame.shape
        depth = str(self.bit_depth)
        with tempfile.TemporaryDirectory(prefix="splitfc-vtm-") as tmp:
            yuv, bitstream = Path(tmp) / "in.yuv", Path(tmp) / "out.bin"
            yuv.write_bytes(frame.astype("<u2").tobytes())
            run_program(
                [
                    encoder, "-c", config, "-i", yuv, "-o", "", "-b", bitstream, "-q", str(rate),
                    "--ConformanceWindowMode=1", "-wdt", str(w), "-hgt", str(h), "-f", "1", "-fr", "1",
                    f"--InternalBitDepth={depth}", f"--InputBitDepth={depth}", "--InputChromaFormat=400",
                    f"--OutputBitDepth={depth}",
                ],
                "VTM encode",
            )
            if not bitstream.is_file():
                raise CodecError("VTM encode wrote no bitstream")
            return CodedFrame(bitstream.read_bytes(), {})

    def decode_frame(
        self, payload: bytes, height: int, width: int, rate: int, extra: dict[str, str],
        spec: SplitSpec | None = None,
    ) -> np.ndarray:
        return vtm_decode_frame(payload, height, width, self.bit_depth)


def vtm_decode_frame(payload: bytes, height: int, width: int, bit_depth: int = 10) -> np.ndarray:
    """Decode a VVC bitstream with VTM's decoder (DecoderAppStatic) into a ``height`` x ``width`` luma frame."""
    _, decoder, _ = vtm_tools()
    with tempfile.TemporaryDirectory(prefix="splitfc-vtm-") as tmp:
        bitstream, yuv = Path(tmp) / "in.bin", Path(tmp) / "out.yuv"
        bitstream.write_bytes(payload)
        run_program([decoder, "-b", bitstream, "-o", yuv, "-d", str(bit_depth)], "VTM decode")
        data = yuv.read_bytes() if yuv.is_file() else b""
    luma = height * width * 2
    # 4:0:0 output is luma only; a 4:2:0 bitstream (e.g. VVenC's) appends two chroma planes.
    if len(data) not in (luma, luma * 3 // 2):
        raise CodecError(f"VTM decoder output has {len(data)} bytes; a {height}x{width} 10-bit frame needs {luma}")
    return np.frombuffer(data, dtype="<u2", count=height * width).reshape(height, width).astype(np.uint16)
