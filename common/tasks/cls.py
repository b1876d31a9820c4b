"""Cls: image classification (paper Table 2: DINOv2 linear head, top-1 accuracy on ImageNet)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from splitfc.common.builtin_data import builtin_images
from splitfc.common.data import imagenet_val
from splitfc.common.errors import SplitfcError
from splitfc.common.metrics import top1_accuracy
from splitfc.common.models.base import Sample, TaskOutput
from splitfc.common.tasks import register_task
from splitfc.common.tasks.base import Keep, Task
from splitfc.common.wire import top_k
from splitfc.v1 import service_pb2 as svc

MAX_CLASSES = 1 << 20
"""Largest class count a classification response may declare (the receiver allocates that many floats)."""


@register_task
class Classification(Task):
    """``label`` (class id) and ``probs`` (class probabilities); the top 5 travel."""

    name: ClassVar[str] = "cls"
    label: ClassVar[str] = "Cls"
    proto_field: ClassVar[str] = "classification"
    output_field: ClassVar[str] = "label"
    metric: ClassVar[str] = "top-1 accuracy"

    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        if out.label is None or out.probs is None:
            raise SplitfcError("cls output needs label and probs")
        ids, ps = top_k(out.probs)
        res.classification.CopyFrom(
            svc.Classification(label=int(out.label), top5_ids=ids, top5_probs=ps, num_classes=int(np.size(out.probs)))
        )

    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        """``probs`` holds the top 5 only (the others 0). A response is untrusted: class ids and counts
        outside 0..`MAX_CLASSES` or top-5 lists of different lengths are a `SplitfcError`."""
        c = res.classification
        if not 0 <= c.num_classes <= MAX_CLASSES or any(not 0 <= i < MAX_CLASSES for i in c.top5_ids):
            raise SplitfcError(f"classification response declares classes outside 0..{MAX_CLASSES}")
        if len(c.top5_ids) != len(c.top5_probs):
            raise SplitfcError("classification response: top-5 ids and probabilities differ in length")
        probs = np.zeros(max(c.num_classes, (max(c.top5_ids) + 1) if c.top5_ids else 0), dtype=np.float32)
        probs[list(c.top5_ids)] = list(c.top5_probs)
        return TaskOutput(task=self.name, label=int(c.label), probs=probs)

    def summary(self, out: TaskOutput) -> dict[str, Any]:
        return {"label": out.label}

    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        value = top1_accuracy([o.label for o in outputs], references)
        return {"metric": self.metric, "value": value, "higher_is_better": True}

    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        return builtin_images(n, train)

    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        return imagenet_val(path, n=n, keep=keep)
