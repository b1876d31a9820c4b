"""Error types. Every error a user can cause is a `SplitfcError` with a one-line message.

Each type carries a fixed ``reason`` code (a short snake_case word). Errors are
raised where the problem is found, as the most specific type; the services map
types to a transport status and use ``reason`` as the metric label (one table
in ``cloud/errors.py``). A reason never comes from a message text, so nothing a
client sends can choose a label.
"""

from __future__ import annotations

from typing import ClassVar


class SplitfcError(Exception):
    """Base class: a problem the user can act on, described in one line."""

    reason: ClassVar[str] = "error"
    """Fixed reason code of this error type (a metric label)."""


class UnknownNameError(SplitfcError, KeyError):
    """An unknown split, codec, preset or other registry key."""

    reason: ClassVar[str] = "unknown_name"

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class ShapeError(SplitfcError, ValueError):
    """A tensor whose shape does not fit the split it is declared for."""

    reason: ClassVar[str] = "shape"


class NonFiniteError(SplitfcError, ValueError):
    """Features holding NaN or infinite values, or values a storage type cannot hold."""

    reason: ClassVar[str] = "non_finite"


class BitstreamError(SplitfcError, ValueError):
    """A bitstream that is corrupt, truncated, foreign or otherwise not decodable."""

    reason: ClassVar[str] = "decode"


class BitstreamParseError(BitstreamError):
    """Bytes that are not a serialized bitstream message (protobuf parse failed, bad magic)."""

    reason: ClassVar[str] = "parse"


class FormatVersionError(BitstreamError):
    """A bitstream of a format version this reader does not know."""

    reason: ClassVar[str] = "version"


class ChecksumError(BitstreamError):
    """A payload whose CRC32 does not match the header: corrupted in transit or storage."""

    reason: ClassVar[str] = "crc"


class UnknownCodecError(BitstreamError, UnknownNameError):
    """A bitstream naming a codec this reader does not have."""

    reason: ClassVar[str] = "unknown_codec"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class HeaderError(BitstreamError):
    """A header whose pre-processing fields (ranges, bit depth, packing, frame size) are invalid."""

    reason: ClassVar[str] = "header"


class TooManyElementsError(BitstreamError):
    """A declared shape over the reader's element limit (refused before any allocation)."""

    reason: ClassVar[str] = "too_many_elements"


class IntegrityError(BitstreamError):
    """Decoded content whose digest differs from the one the encoder computed: never silent garbage."""

    reason: ClassVar[str] = "integrity"


class ArtefactUnavailableError(BitstreamError):
    """A bitstream that needs a fitted artefact this side does not have (e.g. the native codec's channel
    transform named by its id): the bitstream may be fine, this installation lacks what decodes it."""

    reason: ClassVar[str] = "artefact_unavailable"


class CodecUnavailableError(SplitfcError, RuntimeError):
    """A codec whose external binary or library is missing here."""

    reason: ClassVar[str] = "codec_unavailable"


class CodecError(SplitfcError, RuntimeError):
    """A codec run that failed (non-zero exit, timeout, bad output)."""

    reason: ClassVar[str] = "decode"
