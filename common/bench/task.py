"""The benchmark's only contact with models and metrics.

Models come from ``splitfc.common.models`` (`get_split_model`, `tiny_samples`)
and scores from ``splitfc.common.metrics``; this module turns `TaskOutput`
objects into JSON fields plus arrays for the cache and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from splitfc.common.models.base import SplitModel, TaskOutput


class Score(NamedTuple):
    """A task metric value with its name and direction."""

    value: float
    metric: str
    higher_is_better: bool


@cache
def split_model(split_id: str, preset: str) -> SplitModel:
    """The split model of a preset, built once per process."""
    from splitfc.common.models import get_split_model

    return get_split_model(split_id, preset)


def samples(split_id: str, n: int, preset: str = "tiny") -> list[Any]:
    """``n`` held-back samples of a preset's split (offline, deterministic; `preset_samples`):
    ``small`` CSR/Cls carry ground truth in ``target`` (ARC answer index, textile class)."""
    from splitfc.common.models import preset_samples

    return list(preset_samples(split_id, n, preset))


def output_to_cache(out: TaskOutput) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """JSON-able scalars and arrays of a task output."""
    fields: dict[str, Any] = {"task": out.task, "label": out.label, "choices": list(out.choices)}
    arrays = {name: np.asarray(value) for name in TaskOutput.ARRAY_FIELDS if (value := getattr(out, name)) is not None}
    return fields, arrays


def output_from_cache(fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> TaskOutput:
    """Inverse of `output_to_cache`."""
    return TaskOutput(
        task=fields["task"], label=fields.get("label"), choices=list(fields.get("choices") or []),
        **{name: arrays.get(name) for name in TaskOutput.ARRAY_FIELDS},
    )


def score(split_id: str, outputs: Sequence[TaskOutput], references: Sequence[TaskOutput]) -> Score:
    """The split's task metric of ``outputs`` against the reference outputs (paper Table 2)."""
    from splitfc.common.metrics import score_outputs

    result = score_outputs(split_id, list(outputs), list(references))
    return Score(float(result["value"]), str(result["metric"]), bool(result["higher_is_better"]))
