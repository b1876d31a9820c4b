"""DINOv2 split points (paper Table 1): Cls and Seg after the last block (SPDS), Dpt at four depths (SPDM).

The model family is `splitfc.common.models.dinov2`.
"""

from __future__ import annotations

from splitfc.common.specs import Packing, SplitSpec, TruncationColumn, register_split

register_split(
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
        # small preset: measured by `splitfc feature-ranges --split dinov2-cls --preset small --samples 16`,
        # ranges by the rule of splitfc.common.feature_ranges (docs/models.md)
        preset_truncation={"small": {
            TruncationColumn.VTM: ((-26.41, 7.6),),
            TruncationColumn.HYPERPRIOR: ((-10.0, 7.6),),
        }},
        preset_original_range={"small": ((-26.40, 7.59),)},
    )
)

register_split(
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
        # small preset: measured by `splitfc feature-ranges --split dinov2-seg --preset small --samples 16`,
        # ranges by the rule of splitfc.common.feature_ranges (docs/models.md)
        preset_truncation={"small": {
            TruncationColumn.VTM: ((-33.84, 11.23),),
            TruncationColumn.HYPERPRIOR: ((-10.0, 10.0),),
        }},
        preset_original_range={"small": ((-33.84, 11.22),)},
    )
)

register_split(
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
        # small preset: measured by `splitfc feature-ranges --split dinov2-dpt --preset small --samples 16`,
        # ranges by the rule of splitfc.common.feature_ranges (docs/models.md)
        preset_truncation={"small": {
            TruncationColumn.VTM: ((-0.47, 0.5), (-0.62, 1.0), (-1.41, 2.0), (-33.75, 10.7)),
            TruncationColumn.HYPERPRIOR: ((-0.2, 0.2), (-0.5, 0.5), (-1.0, 1.0), (-10.0, 10.0)),
        }},
        preset_original_range={"small": ((-0.46, 1.80), (-0.61, 1.67), (-1.41, 5.25), (-33.74, 10.70))},
    )
)
