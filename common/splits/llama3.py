"""Llama3 split point (paper Table 1): the last decoder layer's output (SPG), for CSR.

The model family is `splitfc.common.models.llama3`.
"""

from __future__ import annotations

from splitfc.common.specs import Packing, SplitSpec, TruncationColumn, register_split

register_split(
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
        # small preset: measured by `splitfc feature-ranges --split llama3-csr --preset small --samples 16`,
        # ranges by the rule of splitfc.common.feature_ranges (docs/models.md)
        preset_truncation={"small": {
            TruncationColumn.VTM: ((-500.0, 500.0),),
            TruncationColumn.HYPERPRIOR: ((-200.0, 200.0),),
        }},
        preset_original_range={"small": ((-1110.76, 4426.67),)},
    )
)
