"""Running external codec programs safely: no shell, a timeout, stderr in the error."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from splitfc.common.errors import CodecError, CodecUnavailableError
from splitfc.common.settings import codec_settings

_STDERR_TAIL = 600


def run_program(
    args: Sequence[str | Path], what: str, stdin: bytes | None = None, timeout_s: float | None = None
) -> bytes:
    """Run ``args`` (no shell); return stdout. Failures raise `CodecError` naming ``what``."""
    timeout = codec_settings().codec_timeout_s if timeout_s is None else timeout_s
    try:
        proc = subprocess.run(
            [str(a) for a in args], input=stdin, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise CodecError(f"{what} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise CodecUnavailableError(f"{what} could not start {args[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
        raise CodecError(f"{what} failed (exit {proc.returncode}): {' '.join(tail.split()) or 'no message'}")
    return proc.stdout


def ffmpeg_path() -> Path:
    """The ffmpeg binary: settings ``SPLITFC_FFMPEG`` or the one imageio-ffmpeg ships."""
    configured = codec_settings().ffmpeg
    if configured is not None:
        if not configured.exists():
            raise CodecUnavailableError(f"SPLITFC_FFMPEG={configured} does not exist")
        return configured
    try:
        import imageio_ffmpeg
    except ImportError:
        found = shutil.which("ffmpeg")
        if found:
            return Path(found)
        raise CodecUnavailableError("ffmpeg not found: pip install imageio-ffmpeg or set SPLITFC_FFMPEG") from None
    return Path(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_has(component: str, kind: str) -> bool:
    """Whether ffmpeg lists ``component`` among its ``kind`` ('encoders' or 'decoders')."""
    out = run_program([ffmpeg_path(), "-hide_banner", f"-{kind}"], f"ffmpeg -{kind}", timeout_s=30)
    return any(line.split()[1:2] == [component] for line in out.decode(errors="replace").splitlines() if line.strip())


def check_decoded_size(data: bytes, expected: int, what: str) -> None:
    if len(data) != expected:
        raise CodecError(f"{what} produced {len(data)} bytes, expected {expected}")
