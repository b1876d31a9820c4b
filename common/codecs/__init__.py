"""Codec registry: codecs keyed by name. A new codec is one module and one line here."""

from __future__ import annotations

from splitfc.common.codecs.base import Codec, Encoded, FrameCodec, FrameInfo
from splitfc.common.errors import UnknownNameError

CODECS: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: add a codec to the registry under ``cls.name``."""
    if cls.name in CODECS:
        raise ValueError(f"codec {cls.name!r} registered twice")
    CODECS[cls.name] = cls
    return cls


def get_codec(name: str) -> Codec:
    """A codec instance by name; unknown names list the valid ones."""
    try:
        return CODECS[name]()
    except KeyError:
        raise UnknownNameError(f"unknown codec {name!r}; valid codecs: {', '.join(CODECS)}") from None


# Registration: importing a module registers its codec.
from splitfc.common.codecs import raw  # noqa: E402,F401

__all__ = ["CODECS", "Codec", "Encoded", "FrameCodec", "FrameInfo", "get_codec", "register_codec"]
