"""Running external codec programs safely: no shell, a timeout, stderr in the error.

The error keeps the tail of the program's stderr without memory addresses (ffmpeg
writes ``[hevc @ 0x55d5c1a2b3c0]``: a server's heap layout is nobody's business).
A caller may also stop a run early (`stop_when`): the cloud does when the client's
deadline passes or it cancels, so an external decoder does not run for nobody.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from splitfc.common.errors import CodecError, CodecUnavailableError
from splitfc.common.settings import codec_settings

_STDERR_TAIL = 600
_ADDRESS = re.compile(r"\s*@\s*0x[0-9a-fA-F]+|0x[0-9a-fA-F]{4,}")
"""``[hevc @ 0x55d5c1a2b3c0]`` -> ``[hevc]``; any other long hex number (an address) -> ``0x?``."""
POLL_S = 0.1
"""How often a running program's stop condition is checked (only when one is set)."""

StopCheck = Callable[[], "str | None"]
_STOP: ContextVar[StopCheck | None] = ContextVar("splitfc_codec_stop", default=None)


@contextmanager
def stop_when(check: StopCheck | None) -> Iterator[None]:
    """Within the block (this thread/context), `run_program` kills its program as soon as ``check()``
    returns a reason (e.g. "deadline exceeded"), raising `CodecError` with it."""
    token = _STOP.set(check)
    try:
        yield
    finally:
        _STOP.reset(token)


def scrub(text: str) -> str:
    """``text`` without memory addresses, whitespace runs folded."""
    return " ".join(_ADDRESS.sub(lambda m: "" if "@" in m.group(0) else "0x?", text).split())


def run_program(
    args: Sequence[str | Path], what: str, stdin: bytes | None = None, timeout_s: float | None = None
) -> bytes:
    """Run ``args`` (no shell); return stdout. Failures raise `CodecError` naming ``what``."""
    timeout = codec_settings().codec_timeout_s if timeout_s is None else timeout_s
    stop = _STOP.get()
    try:
        proc = subprocess.Popen(
            [str(a) for a in args], stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise CodecUnavailableError(f"{what} could not start {args[0]}: {exc.strerror}") from None
    end = time.monotonic() + timeout
    with proc:
        while True:
            left = end - time.monotonic()
            try:
                out, err = proc.communicate(stdin, timeout=max(0.0, min(left, POLL_S) if stop else left))
                break
            except subprocess.TimeoutExpired:
                reason = stop() if stop is not None else None
                if reason is None and time.monotonic() < end:
                    continue
                proc.kill()
                proc.communicate()
                message = f"{what} stopped: {reason}" if reason else f"{what} timed out after {timeout:g} s"
                raise CodecError(message) from None
    if proc.returncode != 0:
        tail = scrub(err.decode(errors="replace").strip())[-_STDERR_TAIL:]
        raise CodecError(f"{what} failed (exit {proc.returncode}): {tail or 'no message'}")
    return out


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
