"""Typed settings with environment overrides (prefix ``SPLITFC_``).

All configuration is read here; nothing else reads ``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class CodecSettings(BaseSettings):
    """Where external codec binaries live and how long they may run."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    vtm_dir: Path | None = None
    """Folder holding VTM's EncoderAppStatic/DecoderAppStatic (else PATH)."""
    vtm_config: Path | None = None
    """VTM encoder_intra_vtm.cfg; default: <vtm_dir>/encoder_intra_vtm.cfg or cfg/ beside it."""
    ffmpeg: Path | None = None
    """ffmpeg binary; default: the one shipped by imageio-ffmpeg."""
    codec_timeout_s: float = 600.0
    """Wall-clock limit of one external codec run."""
    vvenc_preset: str = "medium"
    """VVenC preset (faster, fast, medium, slow, slower)."""
    x265_preset: str = "medium"
    """x265 preset."""


@lru_cache(maxsize=1)
def codec_settings() -> CodecSettings:
    """The process-wide codec settings (read once)."""
    return CodecSettings()


class CliSettings(BaseSettings):
    """Command-line behaviour."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_", extra="ignore")

    debug: bool = False
    """Show Python tracebacks instead of one-line errors."""


@lru_cache(maxsize=1)
def cli_settings() -> CliSettings:
    return CliSettings()
