"""Split specs: everything that is true of one split point, looked up by id.

Shapes, truncation ranges (paper Table 4) and the packing rule live here and
nowhere else. Layout names follow the paper's dataset:

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
    metric: str
    metric_higher_is_better: bool = True

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


SPLITS: dict[str, SplitSpec] = {
    spec.id: spec
    for spec in (
        SplitSpec(
            id="dinov2-cls",
            family="dinov2",
            task="cls",
            split_point="SPDS: output of the last ViT block (40th of ViT-g)",
            layout=("tokens", "channels"),
            paper_shape=(257, 1536),
            packing=Packing.AS_IS,
            truncation={
                TruncationColumn.VTM: ((-20.0, 20.0),),
                TruncationColumn.HYPERPRIOR: ((-5.0, 5.0),),
            },
            original_range=((-542.30, 94.14),),
            group_axis=None,
            head="norm + linear on [CLS, mean of patch tokens]",
            metric="top-1 accuracy",
        ),
        SplitSpec(
            id="dinov2-seg",
            family="dinov2",
            task="seg",
            split_point="SPDS: output of the last ViT block (40th of ViT-g)",
            layout=("views", "tokens", "channels"),
            paper_shape=(2, 1370, 1536),
            packing=Packing.STACK_VIEWS,
            truncation={
                TruncationColumn.VTM: ((-20.0, 20.0),),
                TruncationColumn.HYPERPRIOR: ((-5.0, 5.0),),
            },
            original_range=((-506.97, 105.95),),
            group_axis=None,
            head="norm + linear per patch token, upsampled",
            metric="mIoU",
        ),
        SplitSpec(
            id="dinov2-dpt",
            family="dinov2",
            task="dpt",
            split_point="SPDM: outputs of blocks 10/20/30/40 (1/4..4/4 of the depth)",
            layout=("views", "layers", "tokens", "channels"),
            paper_shape=(2, 4, 1611, 1536),
            packing=Packing.VIEWS_LAYERS,
            truncation={
                TruncationColumn.VTM: ((-1.0, 1.0), (-2.0, 2.0), (-10.0, 10.0), (-20.0, 20.0)),
                TruncationColumn.HYPERPRIOR: ((-1.0, 1.0), (-2.0, 2.0), (-10.0, 10.0), (-10.0, 10.0)),
            },
            original_range=((-2.38, 3.27), (-26.44, 5.03), (-323.30, 25.05), (-504.43, 100.27)),
            group_axis=1,
            head="linear4 over the four layers (depth by bins)",
            metric="RMSE",
            metric_higher_is_better=False,
        ),
        SplitSpec(
            id="llama3-csr",
            family="llama3",
            task="csr",
            split_point="SPG: output of the last decoder layer (32nd of 8B)",
            layout=("tokens", "channels"),
            paper_shape=(None, 4096),
            packing=Packing.AS_IS,
            truncation={
                TruncationColumn.VTM: ((-5.0, 5.0),),
                TruncationColumn.HYPERPRIOR: ((-5.0, 5.0),),
            },
            original_range=((-71.50, 47.75),),
            group_axis=None,
            head="final norm + LM head + softmax over answer letters",
            metric="accuracy",
        ),
        SplitSpec(
            id="sd3-tti",
            family="sd3",
            task="tti",
            split_point="SPH: input of the VAE decoder",
            layout=("channels", "height", "width"),
            paper_shape=(16, 128, 128),
            packing=Packing.TILE_CHANNELS,
            truncation={
                TruncationColumn.VTM: ((-5.79, 4.46),),
                TruncationColumn.HYPERPRIOR: ((-5.79, 4.46),),
            },
            original_range=((-5.79, 4.46),),
            group_axis=None,
            head="VAE decoder",
            metric="FID (PSNR without Inception weights)",
            metric_higher_is_better=False,
        ),
    )
}


def get_split(split_id: str) -> SplitSpec:
    """Look up a split by id; unknown ids name the valid ones."""
    try:
        return SPLITS[split_id]
    except KeyError:
        raise UnknownNameError(
            f"unknown split {split_id!r}; valid splits: {', '.join(SPLITS)}"
        ) from None
