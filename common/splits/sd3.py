"""SD3 split point (paper Table 1): the VAE decoder's input (SPH), for TTI.

The model family is `splitfc.common.models.sd3`.
"""

from __future__ import annotations

from splitfc.common.specs import Packing, SplitSpec, TruncationColumn, register_split

register_split(
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
        # small preset: measured by `splitfc feature-ranges --split sd3-tti --preset small --samples 16`,
        # ranges by the rule of splitfc.common.feature_ranges (docs/models.md)
        preset_truncation={"small": {
            TruncationColumn.VTM: ((-3.41, 3.18),),
            TruncationColumn.HYPERPRIOR: ((-2.0, 2.0),),
        }},
        preset_original_range={"small": ((-3.40, 3.18),)},
    )
)
