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

from dataclasses import dataclass
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
    original_range: tuple[Range, ...]
    group_axis: int | None
    head: str

    @property
    def rank(self) -> int:
        return len(self.layout)

    def ranges(self, column: TruncationColumn) -> tuple[Range, ...]:
        """Truncation ranges for a codec family: one, or one per group."""
        return self.truncation[column]

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
    SPLITS[spec.id] = spec
    return spec


def get_split(split_id: str) -> SplitSpec:
    """Look up a split by id; unknown ids name the valid ones."""
    try:
        return SPLITS[split_id]
    except KeyError:
        raise UnknownNameError(
            f"unknown split {split_id!r}; valid splits: {', '.join(SPLITS)}"
        ) from None


def _import_split_modules() -> None:
    """Import ``splitfc.common.splits``: each of its modules registers one family's split points."""
    import importlib

    importlib.import_module("splitfc.common.splits")


_import_split_modules()
