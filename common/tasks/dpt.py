"""Dpt: monocular depth estimation (paper Table 2: DINOv2 linear4 head, RMSE on NYU-Depth-v2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from splitfc.common.builtin_data import builtin_images
from splitfc.common.data import nyu_depth_v2
from splitfc.common.errors import SplitfcError
from splitfc.common.metrics import rmse
from splitfc.common.models.base import Sample, TaskOutput
from splitfc.common.tasks import register_task
from splitfc.common.tasks.base import Keep, Task
from splitfc.common.wire import array_from_proto, array_to_proto
from splitfc.v1 import service_pb2 as svc


@register_task
class Depth(Task):
    """``depth``: HxW float32 depth in metres."""

    name: ClassVar[str] = "dpt"
    label: ClassVar[str] = "Dpt"
    proto_field: ClassVar[str] = "depth"
    output_field: ClassVar[str] = "depth"
    metric: ClassVar[str] = "RMSE"
    higher_is_better: ClassVar[bool] = False

    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        if out.depth is None:
            raise SplitfcError("dpt output needs a depth map")
        res.depth.depth.CopyFrom(array_to_proto(np.asarray(out.depth, dtype=np.float32)))

    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        return TaskOutput(task=self.name, depth=array_from_proto(res.depth.depth))

    def summary(self, out: TaskOutput) -> dict[str, Any]:
        return {"shape": list(np.shape(out.depth))}

    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        return {"metric": self.metric, "value": rmse([o.depth for o in outputs], references), "higher_is_better": False}

    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        return builtin_images(n, train)

    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        return nyu_depth_v2(path, n=n, keep=keep)
