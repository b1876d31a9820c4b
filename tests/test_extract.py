"""``splitfc extract``: feature files + manifest that ``splitfc encode`` accepts; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitfc.cli import main
from splitfc.common.models import get_split_model, tiny_samples
from splitfc.common.specs import SPLITS


@pytest.mark.parametrize("split", list(SPLITS))
def test_extract_writes_features_that_encode_accepts(tmp_path: Path, split: str, capsys) -> None:
    out = tmp_path / split
    assert main(["extract", "--split", split, "--preset", "tiny", "--samples", "2", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    model = get_split_model(split, "tiny")
    samples = tiny_samples(split, 2)
    assert manifest["split"] == split and manifest["preset"] == "tiny" and manifest["train"] is False
    assert manifest["model"] == model.model_name and manifest["dtype"] == "float32"
    assert manifest["expected_shape"] == list(model.expected_shape())
    assert [f["id"] for f in manifest["files"]] == [s.id for s in samples]
    for entry, sample in zip(manifest["files"], samples, strict=True):
        features = np.load(out / entry["file"])
        assert list(features.shape) == entry["shape"]
        assert np.array_equal(features, model.head(sample.inputs))
    first = out / manifest["files"][0]["file"]
    sfc = tmp_path / "x.sfc"
    assert main(["encode", str(first), "--split", split, "--codec", "raw", "-o", str(sfc)]) == 0
    assert main(["decode", str(sfc), "-o", str(tmp_path / "back.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "back.npy"), np.load(first))
    from splitfc.common.codecs import CODECS

    if "hevc" in CODECS and CODECS["hevc"].unavailable_reason() is None:
        assert main(["encode", str(first), "--split", split, "--codec", "hevc", "--qp", "32", "-o", str(sfc)]) == 0
    capsys.readouterr()


def test_extract_train_set_is_disjoint(tmp_path: Path) -> None:
    assert main(["extract", "--split", "dinov2-cls", "--samples", "3", "-o", str(tmp_path / "e")]) == 0
    assert main(["extract", "--split", "dinov2-cls", "--samples", "3", "--train", "-o", str(tmp_path / "t")]) == 0
    evals = json.loads((tmp_path / "e" / "manifest.json").read_text())
    trains = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert trains["train"] is True
    assert {f["id"] for f in evals["files"]}.isdisjoint({f["id"] for f in trains["files"]})
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(
        [f["file"] for f in trains["files"]] + ["manifest.json"])


def test_extract_from_a_local_data_set(tmp_path: Path) -> None:
    rec = {"question": {"stem": "Which is hot?", "choices": [{"text": "ice", "label": "A"},
                                                            {"text": "fire", "label": "B"}]}, "answerKey": "B"}
    path = tmp_path / "ARC-Challenge-Test.jsonl"
    path.write_text("".join(json.dumps({**rec, "id": f"Mercury/{i}"}) + "\n" for i in range(12)))
    out = tmp_path / "f"
    assert main(["extract", "--split", "llama3-csr", "--samples", "2", "--data", str(path), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == str(path)
    assert [f["file"] for f in manifest["files"]] == [f["id"].replace("/", "_") + ".npy" for f in manifest["files"]]
    assert np.load(out / manifest["files"][0]["file"]).shape[1] == 128


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "vgg-cls", "--samples", "1"], "unknown split 'vgg-cls'; valid splits: dinov2-cls"),
        (["--split", "dinov2-cls", "--preset", "big", "--samples", "1"], "valid presets: tiny, small, paper"),
        (["--split", "dinov2-cls", "--samples", "0"], "--samples must be at least 1"),
        (["--split", "dinov2-seg", "--samples", "1", "--data", "/no/such/voc"], "VOC2012 folder not found: /no/such"),
    ],
)
def test_extract_bad_input_is_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert main(["extract", *args, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitfc: error: ")
    assert message in err[0]


def test_extract_paper_preset_without_checkpoint_names_the_path(tmp_path: Path, capsys, monkeypatch) -> None:
    from splitfc.common.settings import model_settings

    monkeypatch.setenv("SPLITFC_MODEL_DIR", str(tmp_path / "models"))
    model_settings.cache_clear()
    try:
        code = main(["extract", "--split", "llama3-csr", "--preset", "paper", "--samples", "1", "-o", str(tmp_path)])
    finally:
        monkeypatch.delenv("SPLITFC_MODEL_DIR")
        model_settings.cache_clear()
    assert code == 2
    assert f"checkpoint folder not found: {tmp_path / 'models' / 'Meta-Llama-3-8B'}" in capsys.readouterr().err
