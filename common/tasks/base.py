"""The task interface: one task (paper Table 2) is one module with one `Task` subclass.

A task owns everything that depends on what the model's tail outputs: its wire
conversion (`TaskOutput` <-> its field of ``splitfc.v1.TaskResult``), its metric
(paper Table 2) against ground truth or against the uncompressed pipeline, the
compact summary the edge logs, and where its samples come from (the paper's data
set on disk, or the built-in offline samples). Nothing outside ``common/tasks``
branches on a task name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from splitfc.common.models.base import Sample, TaskOutput
from splitfc.v1 import service_pb2 as svc

Keep = Callable[[str], bool] | None
"""A sample-id filter (the train/eval partition of real data sets)."""


class Task(ABC):
    """One task: output type on the wire, metric, summary, samples."""

    name: ClassVar[str]
    """Task id as in split specs and ``TaskResult.task`` (``cls``, ``seg``, ...)."""
    label: ClassVar[str]
    """Name in tables (``Cls``, ``Seg``, ...), as in the paper."""
    proto_field: ClassVar[str]
    """The ``TaskResult.output`` oneof field this task fills (service.proto)."""
    output_field: ClassVar[str]
    """The `TaskOutput` field a reference output is compared on (``label``, ``mask``, ...)."""
    metric: ClassVar[str]
    """The task metric of paper Table 2 (``top-1 accuracy``, ``mIoU``, ...)."""
    higher_is_better: ClassVar[bool] = True
    accuracy_drop: ClassVar[bool] = True
    """Whether "accuracy drop vs the original" is meaningful for this metric (not for FID/PSNR)."""

    @abstractmethod
    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        """Fill this task's field of ``res`` from ``out``; raise `SplitfcError` if ``out`` lacks a field."""

    @abstractmethod
    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        """The `TaskOutput` of a response's ``TaskResult`` (this task's field set)."""

    @abstractmethod
    def summary(self, out: TaskOutput) -> dict[str, Any]:
        """A compact JSON view of one output for logs and reports."""

    @abstractmethod
    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        """``{"metric", "value", "higher_is_better", ...}`` of ``outputs`` against reference values.

        ``references`` are ground truth, or the ``output_field`` of the uncompressed pipeline's
        outputs; ``kind`` says which (``"ground truth"`` / ``"uncompressed pipeline"``).
        """

    @abstractmethod
    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        """``n`` offline, deterministic samples; ``train=True`` gives a disjoint set."""

    @abstractmethod
    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        """Samples of the paper's data set from a local ``path`` (see `splitfc.common.data`)."""

    def ground_truth(self, references: Sequence[Any]) -> list[Any]:
        """Ground-truth references as `score` takes them (e.g. image paths read as arrays)."""
        return list(references)
