"""Split models by split id and preset.

``get_split_model("dinov2-cls", "tiny")`` builds (once per process) the model of a
split: ``head`` (edge part), ``tail`` (cloud part + task head). A family is one
module ``common/models/<family>.py`` that calls `register_family` (its split points
are in ``common/splits/<family>.py``): `dinov2`, `llama3`, `sd3`.
Presets: ``tiny`` (seeded random weights, offline) and ``paper`` (real checkpoints).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from splitfc.common.errors import UnknownNameError
from splitfc.common.models.base import PRESETS, MultipleChoice, Prompt, Sample, SplitModel, TaskOutput
from splitfc.common.specs import get_split

FamilyBuilder = Callable[..., SplitModel]
FAMILIES: dict[str, FamilyBuilder] = {}
"""Model families by name: ``build(split_id, preset, **overrides)``. A family module
``splitfc.common.models.<family>`` registers itself when first needed."""

_CACHE: dict[tuple[str, str], SplitModel] = {}
_LOCK = threading.Lock()


def check_preset(preset: str) -> str:
    """Return ``preset`` if known, else raise `UnknownNameError` naming the valid presets."""
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


def register_family(name: str, build: FamilyBuilder) -> FamilyBuilder:
    """Register a model family's builder (family modules call this on import)."""
    if name in FAMILIES and FAMILIES[name] is not build:
        raise ValueError(f"model family {name!r} registered twice")
    FAMILIES[name] = build
    return build


def family_builder(family: str) -> FamilyBuilder:
    """The builder of ``family``, importing ``splitfc.common.models.<family>`` on first use."""
    if family not in FAMILIES:
        try:
            importlib.import_module(f"{__name__}.{family}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{family}":
                raise
        if family not in FAMILIES:
            raise UnknownNameError(f"no model family {family!r} (expected module {__name__}.{family})")
    return FAMILIES[family]


def build_split_model(split_id: str, preset: str = "tiny", **overrides: Any) -> SplitModel:
    """Build a fresh split model (no cache). ``overrides`` go to the family's ``build``
    (e.g. ``source=`` a checkpoint folder or hub id, ``heads=`` the DINOv2 heads folder)."""
    spec = get_split(split_id)
    check_preset(preset)
    return family_builder(spec.family)(split_id, preset, **overrides)


def get_split_model(split_id: str, preset: str = "tiny", **overrides: Any) -> SplitModel:
    """The split model of ``split_id`` and ``preset``, built once per process.

    Calls with ``overrides`` are cached under them too (values by ``repr``).
    Unknown split ids and presets raise `UnknownNameError` naming the valid ones.
    """
    get_split(split_id)
    check_preset(preset)
    key = (split_id, preset)
    if overrides:
        key = (split_id, f"{preset}:{sorted((k, repr(v)) for k, v in overrides.items())}")
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = build_split_model(split_id, preset, **overrides)
            _CACHE[key] = model
        return model


def tiny_samples(split_id: str, n: int, train: bool = False) -> list[Sample]:
    """The built-in offline samples of a split (deterministic; ``train=True`` is a disjoint set)."""
    from splitfc.common.data import builtin_samples

    return builtin_samples(split_id, n, train=train)


__all__ = [
    "FAMILIES",
    "PRESETS",
    "MultipleChoice",
    "Prompt",
    "Sample",
    "SplitModel",
    "TaskOutput",
    "build_split_model",
    "check_preset",
    "family_builder",
    "get_split_model",
    "register_family",
    "tiny_samples",
]
