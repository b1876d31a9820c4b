"""Split specs: everything that is true of one split point, looked up by id.

`SplitSpec` (shapes, truncation ranges of paper Table 4, packing rule) and the
registry `SPLITS` live here; each model family registers its split points in
``common/splits/<family>.py``. Layout names follow the paper's dataset:

* ``dinov2-cls``  tokens x channels              (257 x 1536)
* ``dinov2-seg``  views x tokens x channels      (2 x 1370 x 1536)
* ``dinov2-dpt``  views x layers x tokens x ch.  (2 x 4 x 1611 x 1536)
* ``llama3-csr``  tokens x channels              (N x 4096)
* ``sd3-tti``     channels x height x width      (16 x 128 x 128)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from splitfc.common.errors import ShapeError, UnknownNameError

Range = tuple[float, float]


class Packing(StrEnum):
    """How an N-d feature tensor becomes one 2-D frame (paper Section 6.1.1)."""

    AS_IS = "as_is"
    """(H, W) stays as it is."""
    STACK_VIEWS = "stack_views"
    """(V, T, C) -> (V*T, C): views stacked vertically."""
    VIEWS_LAYERS = "views_layers"
    """(V, L, T, C) -> (V*T, L*C): views stacked vertically, layers side by side."""
    TILE_CHANNELS = "tile_channels"
    """(C, H, W) -> (r*H, c*W): channels tiled row-major on an r x c grid (4 x 4 for 16)."""


class TruncationColumn(StrEnum):
    """Which column of paper Table 4 a codec family uses."""

    VTM = "vtm"
    HYPERPRIOR = "hyperprior"


@dataclass(frozen=True)
class SplitSpec:
    """One split point of paper Table 1."""

    id: str
    family: str
    task: str
    split_point: str
    layout: tuple[str, ...]
    paper_shape: tuple[int | None, ...]
    packing: Packing
    truncation: dict[TruncationColumn, tuple[Range, ...]]
    """Truncation ranges of paper Table 4 (``tiny`` and ``paper`` use them): one, or one per group."""
    original_range: tuple[Range, ...]
    """Feature range paper Table 4 measured on the paper's model."""
    group_axis: int | None
    head: str
    preset_truncation: dict[str, dict[TruncationColumn, tuple[Range, ...]]] = field(default_factory=dict)
    """A preset's own truncation ranges (``small``: measured on its models, docs/models.md), by preset."""
    preset_original_range: dict[str, tuple[Range, ...]] = field(default_factory=dict)
    """The feature range measured on a preset's model (training samples), by preset."""

    @property
    def rank(self) -> int:
        return len(self.layout)

    def ranges(self, column: TruncationColumn) -> tuple[Range, ...]:
        """Truncation ranges for a codec family: one, or one per group."""
        return self.truncation[column]

    def for_preset(self, preset: str | None) -> SplitSpec:
        """This split as a preset's models see it: its own truncation ranges and measured range where the
        preset has them (``small``), else this spec itself (paper Table 4: ``tiny``, ``paper``).

        Encoders take the ranges from the spec they are given and write them into the bitstream, so
        decoders need no preset (`splitfc.common.preprocess.FrameInfo`).
        """
        if preset is None or preset not in self.preset_truncation:
            return self
        own = self.preset_truncation[preset]
        return replace(
            self,
            truncation={**self.truncation, **own},
            original_range=self.preset_original_range.get(preset, self.original_range),
        )

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise `ShapeError` unless ``shape`` fits this split's layout."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != self.rank or any(s <= 0 for s in shape):
            raise ShapeError(
                f"split {self.id} expects a {self.rank}-d tensor "
                f"({' x '.join(self.layout)}, paper shape {format_shape(self.paper_shape)}), "
                f"got shape {format_shape(shape)}"
            )
        if self.group_axis is not None:
            groups = len(next(iter(self.truncation.values())))
            if shape[self.group_axis] != groups:
                raise ShapeError(
                    f"split {self.id} expects {groups} {self.layout[self.group_axis]} "
                    f"on axis {self.group_axis}, got shape {format_shape(shape)}"
                )


def format_shape(shape: tuple[int | None, ...]) -> str:
    """``(2, 1370, 1536)`` -> ``2x1370x1536``; ``None`` shows as ``N``."""
    return "x".join("N" if s is None else str(s) for s in shape)


SPLITS: dict[str, SplitSpec] = {}
"""Registered split points by id, in registration order (``common/splits/<family>.py``)."""


def register_split(spec: SplitSpec) -> SplitSpec:
    """Add a split point to `SPLITS` (ids are unique)."""
    if spec.id in SPLITS:
        raise ValueError(f"split {spec.id!r} registered twice")
    for preset, columns in spec.preset_truncation.items():
        for column, ranges in columns.items():
            if len(ranges) != len(spec.truncation[column]) or any(not high > low for low, high in ranges):
                raise ValueError(
                    f"split {spec.id!r}: {preset} {column.value} ranges {ranges} must be "
                    f"{len(spec.truncation[column])} ranges with high > low"
                )
    SPLITS[spec.id] = spec
    return spec


def get_split(split_id: str, preset: str | None = None) -> SplitSpec:
    """Look up a split by id; unknown ids name the valid ones.

    With ``preset``: the spec with that preset's truncation ranges (`SplitSpec.for_preset`).
    """
    try:
        spec = SPLITS[split_id]
    except KeyError:
        raise UnknownNameError(
            f"unknown split {split_id!r}; valid splits: {', '.join(SPLITS)}"
        ) from None
    return spec.for_preset(preset)


def _import_split_modules() -> None:
    """Import ``splitfc.common.splits``: each of its modules registers one family's split points."""
    import importlib

    importlib.import_module("splitfc.common.splits")


_import_split_modules()
