"""Seg: semantic segmentation (paper Table 2: DINOv2 linear head, mIoU on VOC 2012)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from splitfc.common.builtin_data import builtin_images
from splitfc.common.data import voc2012
from splitfc.common.errors import SplitfcError
from splitfc.common.metrics import miou
from splitfc.common.models.base import Sample, TaskOutput
from splitfc.common.tasks import register_task
from splitfc.common.tasks.base import Keep, Task
from splitfc.common.wire import array_from_proto, array_to_proto
from splitfc.v1 import service_pb2 as svc


@register_task
class Segmentation(Task):
    """``mask``: HxW integer class ids."""

    name: ClassVar[str] = "seg"
    label: ClassVar[str] = "Seg"
    proto_field: ClassVar[str] = "segmentation"
    output_field: ClassVar[str] = "mask"
    metric: ClassVar[str] = "mIoU"

    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        if out.mask is None:
            raise SplitfcError("seg output needs a mask")
        res.segmentation.mask.CopyFrom(array_to_proto(np.asarray(out.mask)))

    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        return TaskOutput(task=self.name, mask=array_from_proto(res.segmentation.mask))

    def summary(self, out: TaskOutput) -> dict[str, Any]:
        return {"shape": list(np.shape(out.mask))}

    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        return {"metric": self.metric, "value": miou([o.mask for o in outputs], references), "higher_is_better": True}

    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        return builtin_images(n, train)

    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        return voc2012(path, n=n, keep=keep)
