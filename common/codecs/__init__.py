"""Codec registry: codecs keyed by name.

Every module of this package (except ``base``) is imported and registers its
codec with ``@register_codec``: a new codec is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil

from splitfc.common.codecs._external import stop_when
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


def _import_codec_modules() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_codec_modules()

__all__ = ["CODECS", "Codec", "Encoded", "FrameCodec", "FrameInfo", "get_codec", "register_codec", "stop_when"]
