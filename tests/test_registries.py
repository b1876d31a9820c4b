"""A new model family, split and task plug in through the registries alone (issue: one task registry).

The toy family, split and task below are registered at run time, as a new module
would register them; nothing in the core knows their names. The test then runs
the whole path: encode with a frame codec, decode in the cloud engine, tail,
wire conversion, scoring, listing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from splitfc.cloud.engine import InferenceEngine
from splitfc.cloud.metrics import CloudMetrics
from splitfc.cloud.settings import CloudSettings
from splitfc.common import models as models_pkg
from splitfc.common.bitstream import decode_features, encode_features
from splitfc.common.codecs import get_codec
from splitfc.common.metrics import score_outputs
from splitfc.common.models import register_family
from splitfc.common.models.base import Sample, SplitModel, TaskOutput
from splitfc.common.specs import SPLITS, Packing, SplitSpec, TruncationColumn, register_split
from splitfc.common.tasks import TASKS, register_task
from splitfc.common.tasks.base import Keep, Task
from splitfc.common.wire import array_from_proto, array_to_proto, task_result_from_proto
from splitfc.v1 import service_pb2 as svc

CHANNELS = 16


class ToyTask(Task):
    """Output: the mean feature vector; metric: its mean absolute error (lower is better)."""

    name: ClassVar[str] = "toy"
    label: ClassVar[str] = "Toy"
    proto_field: ClassVar[str] = "depth"  # an existing Array message: no .proto change for the test
    output_field: ClassVar[str] = "depth"
    metric: ClassVar[str] = "MAE"
    higher_is_better: ClassVar[bool] = False

    def to_proto(self, out: TaskOutput, res: svc.TaskResult) -> None:
        res.depth.depth.CopyFrom(array_to_proto(np.asarray(out.depth, np.float32)))

    def from_proto(self, res: svc.TaskResult) -> TaskOutput:
        return TaskOutput(task=self.name, depth=array_from_proto(res.depth.depth))

    def summary(self, out: TaskOutput) -> dict[str, Any]:
        return {"channels": int(np.size(out.depth))}

    def score(self, outputs: Sequence[TaskOutput], references: list[Any], kind: str) -> dict[str, Any]:
        err = np.mean([np.abs(o.depth - r).mean() for o, r in zip(outputs, references, strict=True)])
        return {"metric": self.metric, "value": float(err), "higher_is_better": False}

    def builtin_samples(self, n: int, train: bool) -> list[Sample]:
        rng = np.random.default_rng(1 if train else 0)
        return [Sample(f"toy-{i}", rng.standard_normal((8, CHANNELS)).astype(np.float32)) for i in range(n)]

    def load_samples(self, path: Path, n: int | None, keep: Keep) -> list[Sample]:
        raise NotImplementedError


class ToyModel(SplitModel):
    """head: identity on a tokens x channels array; tail: mean over tokens."""

    model_name = "toy"

    def __init__(self, spec: SplitSpec, preset: str) -> None:
        self.spec, self.preset = spec, preset

    def head(self, inputs: Any) -> np.ndarray:
        return np.asarray(inputs, np.float32)

    def tail(self, features: np.ndarray) -> TaskOutput:
        return TaskOutput(task="toy", depth=features.mean(axis=0))

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        return self.tail(self.head(inputs))

    def expected_shape(self) -> tuple[int | None, ...]:
        return (None, CHANNELS)


TOY_SPLIT = SplitSpec(
    id="toy-mean", family="toyfamily", task="toy", split_point="the input itself",
    layout=("tokens", "channels"), paper_shape=(None, CHANNELS), packing=Packing.AS_IS,
    truncation={TruncationColumn.VTM: ((-4.0, 4.0),), TruncationColumn.HYPERPRIOR: ((-4.0, 4.0),)},
    original_range=((-4.0, 4.0),), group_axis=None, head="mean over tokens",
)


@pytest.fixture
def toy_registered() -> Iterator[None]:
    register_task(ToyTask)
    register_split(TOY_SPLIT)
    register_family("toyfamily", lambda split_id, preset, **kw: ToyModel(SPLITS[split_id], preset))
    try:
        yield
    finally:
        TASKS.pop("toy", None)
        SPLITS.pop("toy-mean", None)
        models_pkg.FAMILIES.pop("toyfamily", None)
        models_pkg._CACHE.pop(("toy-mean", "tiny"), None)


def test_a_toy_family_split_and_task_run_end_to_end(toy_registered: None, capsys) -> None:
    sample = TASKS["toy"].builtin_samples(1, False)[0]
    model = models_pkg.get_split_model("toy-mean", "tiny")
    features = model.head(sample.inputs)
    codec = "hevc" if get_codec("hevc").unavailable_reason() is None else "raw"
    msg = encode_features(features, "toy-mean", codec, 22 if codec == "hevc" else 0)
    decoded = decode_features(msg)
    assert decoded.shape == features.shape
    assert np.abs(decoded - features).max() <= 0.5  # QP 22 on a 10-bit frame of noise in [-4, 4]

    engine = InferenceEngine(CloudSettings(splits="toy-mean"), CloudMetrics(), logging.getLogger("toy"))

    async def serve_one() -> Any:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        return await engine.run("test", "toy-1", msg.SerializeToString(), time.perf_counter())

    try:
        outcome, failure = asyncio.run(serve_one())
    finally:
        engine.shutdown()
    assert failure is None, failure and failure.message
    out = task_result_from_proto(outcome.result)
    assert out.task == "toy" and outcome.result.task == "toy"
    np.testing.assert_allclose(out.depth, decoded.mean(axis=0), rtol=1e-6)
    score = score_outputs("toy-mean", [out], [model.forward_unsplit(sample.inputs)])
    assert score["metric"] == "MAE" and score["reference"] == "uncompressed pipeline"
    assert 0 <= score["value"] <= 0.1 and score["higher_is_better"] is False
    info = engine.info()
    assert [s.split for s in info.splits] == ["toy-mean"] and info.splits[0].task == "toy"

    from splitfc.cli import main

    assert main(["splits", "--json"]) == 0
    rows = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy-mean"]["family"] == "toyfamily"


def test_builtin_tasks_cover_every_split_and_proto_field() -> None:
    fields = {f.name for f in svc.TaskResult.DESCRIPTOR.oneofs_by_name["output"].fields}
    assert {t.proto_field for t in TASKS.values()} == fields
    assert {s.task for s in SPLITS.values()} <= set(TASKS)
    assert len({t.label for t in TASKS.values()}) == len(TASKS)


def test_an_unknown_family_is_a_clear_error() -> None:
    from splitfc.common.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="no model family 'nosuchfamily'"):
        models_pkg.family_builder("nosuchfamily")
