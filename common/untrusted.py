"""Client-supplied strings in errors and logs: cut to a short prefix, then quoted.

A split name, codec name, request id or codec extra comes from whoever sent the
request and can be any length (a 20 kB split name once pushed an error status
past gRPC's metadata limit; a 4 MiB request id was echoed and logged whole).
Everything that echoes such a string goes through `quote` (error messages) or
`clip` (log fields, which the JSON encoder quotes).
"""

from __future__ import annotations

CLIP_CHARS = 64
"""Characters of a client string that an error message or a log line keeps."""


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``value`` as text, cut to ``limit`` characters; a cut string ends with ``...(N chars)``."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
        total = len(value)
    else:
        text = value if isinstance(value, str) else str(value)
        total = len(text)
    if total <= limit and len(text) <= limit:
        return text
    return f"{text[:limit]}...({total} chars)"


def quote(value: object, limit: int = CLIP_CHARS) -> str:
    """``value`` for an error message: its first ``limit`` characters, quoted (``repr``: control characters
    escaped), followed by ``...(N chars)`` when it was cut."""
    if isinstance(value, bytes | bytearray | memoryview):
        total = len(value)
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
        total = len(text)
    if total <= limit and len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}...({total} chars)"
