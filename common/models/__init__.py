"""Split models by split id and preset.

``get_split_model("dinov2-cls", "tiny")`` builds (once per process) the model of a
split: ``head`` (edge part), ``tail`` (cloud part + task head). Families:
`dinov2` (dinov2-cls, dinov2-seg, dinov2-dpt), `llama3` (llama3-csr), `sd3` (sd3-tti).
Presets: ``tiny`` (seeded random weights, offline) and ``paper`` (real checkpoints).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from splitfc.common.errors import UnknownNameError
from splitfc.common.models.base import PRESETS, MultipleChoice, Prompt, Sample, SplitModel, TaskOutput
from splitfc.common.specs import get_split

FAMILY_MODULES = {"dinov2": "dinov2", "llama3": "llama3", "sd3": "sd3"}

_CACHE: dict[tuple[str, str], SplitModel] = {}
_LOCK = threading.Lock()


def check_preset(preset: str) -> str:
    """Return ``preset`` if known, else raise `UnknownNameError` naming the valid presets."""
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


def build_split_model(split_id: str, preset: str = "tiny", **overrides: Any) -> SplitModel:
    """Build a fresh split model (no cache). ``overrides`` go to the family's ``build``
    (e.g. ``source=`` a checkpoint folder or hub id, ``heads=`` the DINOv2 heads folder)."""
    spec = get_split(split_id)
    check_preset(preset)
    module = importlib.import_module(f"{__name__}.{FAMILY_MODULES[spec.family]}")
    return module.build(split_id, preset, **overrides)


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
    "PRESETS",
    "MultipleChoice",
    "Prompt",
    "Sample",
    "SplitModel",
    "TaskOutput",
    "build_split_model",
    "check_preset",
    "get_split_model",
    "tiny_samples",
]
