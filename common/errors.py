"""Error types. Every error a user can cause is a `SplitfcError` with a one-line message."""

from __future__ import annotations


class SplitfcError(Exception):
    """Base class: a problem the user can act on, described in one line."""


class UnknownNameError(SplitfcError, KeyError):
    """An unknown split, codec, preset or other registry key."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class ShapeError(SplitfcError, ValueError):
    """A tensor whose shape does not fit the split it is declared for."""


class BitstreamError(SplitfcError, ValueError):
    """A bitstream that is corrupt, truncated, foreign or of an unknown version."""


class CodecUnavailableError(SplitfcError, RuntimeError):
    """A codec whose external binary or library is missing here."""


class CodecError(SplitfcError, RuntimeError):
    """A codec run that failed (non-zero exit, timeout, bad output)."""
