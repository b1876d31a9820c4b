"""CSR: common-sense reasoning (paper Table 2: Llama3 LM head over the answer letters, accuracy on ARC-Challenge)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from splitfc.common.builtin_data import builtin_questions
from splitfc.common.data import arc_challenge
from splitfc.common.errors import SplitfcError
from splitfc.common.metrics import csr_accuracy
from splitfc.common.models.base import Sample, TaskOutput
from splitfc.common.tasks import register_task
from splitfc.common.tasks.base import Keep, Task
from splitfc.v1 import service_pb2 as svc


@register_task
class CommonSenseReasoning(Task):
    """``label`` (answer index), ``probs`` over the choices, ``choices`` (letters)."""

    name: ClassVar[str] = "csr"
    label: ClassVar[str] = "CSR"
    proto_field: ClassVar[str] = "answer"
    output_field: ClassVar[str] = "label"
    metric: ClassVar[str] = "accuracy"

    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        if out.label is None or out.probs is None:
            raise SplitfcError("csr output needs label and probs")
        choices = list(out.choices) or [chr(ord("A") + i) for i in range(np.size(out.probs))]
        res.answer.CopyFrom(
            svc.Answer(
                letter=choices[int(out.label)], index=int(out.label), choices=choices,
                probs=[float(p) for p in np.ravel(out.probs)],
            )
        )

    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        a = res.answer
        return TaskOutput(task=self.name, label=int(a.index), probs=np.asarray(a.probs, np.float32),
                          choices=list(a.choices))

    def summary(self, out: TaskOutput) -> dict[str, Any]:
        letter = out.choices[out.label] if out.choices and out.label is not None else None
        return {"label": out.label, "letter": letter}

    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        value = csr_accuracy([o.label for o in outputs], references)
        return {"metric": self.metric, "value": value, "higher_is_better": True}

    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        return builtin_questions(n, train)

    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        return arc_challenge(path, n=n, keep=keep)
