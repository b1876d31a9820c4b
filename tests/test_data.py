"""Data loaders on small files written in each source's format, and the built-in sample set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitfc.common.data import (
    DataError,
    arc_challenge,
    builtin_samples,
    coco_captions,
    imagenet_val,
    is_train_id,
    load_samples,
    nyu_depth_v2,
    voc2012,
)
from splitfc.common.errors import UnknownNameError
from splitfc.common.models.base import MultipleChoice, Prompt
from splitfc.common.specs import SPLITS


def _rgb(seed: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_imagenet_class_folders(tmp_path: Path) -> None:
    for wnid, names in (("n01440764", ["ILSVRC2012_val_00000293"]), ("n01443537", ["ILSVRC2012_val_00000236"])):
        for i, name in enumerate(names):
            _save_png(tmp_path / wnid / f"{name}.png", _rgb(i))
    samples = imagenet_val(tmp_path)
    assert [(s.id, s.target) for s in samples] == [("ILSVRC2012_val_00000236", 1), ("ILSVRC2012_val_00000293", 0)]
    assert np.array_equal(samples[1].inputs, _rgb(0))
    assert len(imagenet_val(tmp_path, n=1)) == 1


def test_imagenet_flat_folder_with_labels_file(tmp_path: Path) -> None:
    _save_png(tmp_path / "val" / "a.png", _rgb(1))
    _save_png(tmp_path / "val" / "b.png", _rgb(2))
    (tmp_path / "labels.txt").write_text("a.png 7\nb.png 999\n")
    samples = imagenet_val(tmp_path / "val", labels=tmp_path / "labels.txt")
    assert [(s.id, s.target) for s in samples] == [("a", 7), ("b", 999)]
    with pytest.raises(DataError, match="no class folders"):
        imagenet_val(tmp_path / "val")


def test_voc2012_layout(tmp_path: Path) -> None:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000042\n")
    (base / "JPEGImages").mkdir()
    (base / "SegmentationClass").mkdir()
    masks = {}
    for k, i in enumerate(("2007_000033", "2007_000042")):
        Image.fromarray(_rgb(k)).save(base / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10] = 15
        mask[0, :] = 255
        masks[i] = mask
        im = Image.fromarray(mask, mode="P")
        im.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
        im.save(base / "SegmentationClass" / f"{i}.png")
    samples = voc2012(tmp_path)  # VOCdevkit parent accepted
    assert [s.id for s in samples] == ["2007_000033", "2007_000042"]
    assert np.array_equal(samples[0].target, masks["2007_000033"].astype(np.int64))
    assert samples[0].inputs.shape == (20, 30, 3)
    with pytest.raises(DataError, match="no VOC2012 layout"):
        voc2012(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages")


def test_nyu_pairs_and_split_file(tmp_path: Path) -> None:
    depth_mm = np.array([[1000, 2500], [0, 65535]], dtype=np.uint16)
    for scene in ("bathroom", "kitchen"):
        Image.fromarray(_rgb(3, 2, 2)).save(_mk(tmp_path / scene / "rgb_00045.jpg"))
        Image.fromarray(depth_mm).save(tmp_path / scene / "sync_depth_00045.png")
    samples = nyu_depth_v2(tmp_path)
    assert [s.id for s in samples] == ["bathroom_rgb_00045", "kitchen_rgb_00045"]
    np.testing.assert_array_equal(samples[0].target, np.array([[1.0, 2.5], [0.0, 65.535]], dtype=np.float32))
    (tmp_path / "split.txt").write_text("/kitchen/rgb_00045.jpg /kitchen/sync_depth_00045.png 518.8579\n")
    assert [s.id for s in nyu_depth_v2(tmp_path, split_file=tmp_path / "split.txt")] == ["kitchen_rgb_00045"]
    with pytest.raises(DataError, match="no NYU-Depth-v2 pairs"):
        nyu_depth_v2(_mk_dir(tmp_path / "empty"))


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _mk_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


ARC_AI2 = {
    "id": "Mercury_7175875",
    "question": {
        "stem": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
                "likely effect of this increase in rotation?",
        "choices": [
            {"text": "Planetary density will decrease.", "label": "A"},
            {"text": "Planetary years will become longer.", "label": "B"},
            {"text": "Planetary days will become shorter.", "label": "C"},
            {"text": "Planetary gravity will become stronger.", "label": "D"},
        ],
    },
    "answerKey": "C",
}
ARC_HF = {
    "id": "NYSEDREGENTS_2015_4_8",
    "question": "Which unit is used to record the volume of water?",
    "choices": {"text": ["grams", "meters", "milliliters"], "label": ["1", "2", "3"]},
    "answerKey": "3",
}


def test_arc_jsonl_both_formats(tmp_path: Path) -> None:
    path = tmp_path / "ARC-Challenge-Test.jsonl"
    path.write_text(json.dumps(ARC_AI2) + "\n\n" + json.dumps(ARC_HF) + "\n")
    first, second = arc_challenge(path)
    assert first.id == "Mercury_7175875" and first.target == 2
    assert first.inputs == MultipleChoice(ARC_AI2["question"]["stem"], tuple(
        c["text"] for c in ARC_AI2["question"]["choices"]), ("A", "B", "C", "D"))
    assert second.inputs.letters() == ("A", "B", "C") and second.target == 2
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=":1: not a JSON line"):
        arc_challenge(path)


def test_arc_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([ARC_HF, {**ARC_HF, "id": "x2", "answerKey": "1"}]), path)
    samples = arc_challenge(path)
    assert [(s.id, s.target) for s in samples] == [("NYSEDREGENTS_2015_4_8", 2), ("x2", 0)]
    assert samples[0].inputs.choices == ("grams", "meters", "milliliters")
    (tmp_path / "arc.csv").write_text("id,question\n")
    with pytest.raises(DataError, match=r"must be \.jsonl or \.parquet"):
        arc_challenge(tmp_path / "arc.csv")


def test_coco_captions(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 285, "file_name": "000000000285.jpg"}],
        "annotations": [
            {"image_id": 285, "id": 9, "caption": "A big  brown bear.\n"},
            {"image_id": 139, "id": 20, "caption": "A room with a TV."},
            {"image_id": 139, "id": 3, "caption": "A living room."},
        ],
    }
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(doc))
    samples = coco_captions(path, images_dir=tmp_path / "val2017")
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    (tmp_path / "images" / "annotations").mkdir()
    layout = tmp_path / "images" / "annotations" / "captions_val2017.json"
    layout.write_text(json.dumps(doc))
    assert coco_captions(layout)[0].target == tmp_path / "images" / "val2017" / "000000000139.jpg"
    assert [s.id for s in samples] == ["000000000139", "000000000285"]
    assert samples[0].inputs == Prompt("A living room.", 139)
    assert samples[1].inputs.text == "A big brown bear."
    assert samples[1].target == tmp_path / "val2017" / "000000000285.jpg"
    path.write_text("{}")
    with pytest.raises(DataError, match="not a COCO captions json"):
        coco_captions(path)


def test_load_samples_partitions_train_and_eval(tmp_path: Path) -> None:
    path = tmp_path / "arc.jsonl"
    path.write_text("".join(json.dumps({**ARC_AI2, "id": f"q{i}"}) + "\n" for i in range(40)))
    evals = load_samples("llama3-csr", path)
    trains = load_samples("llama3-csr", path, train=True)
    assert {s.id for s in evals}.isdisjoint({s.id for s in trains})
    assert len(evals) + len(trains) == 40 and trains
    assert all(is_train_id(s.id) for s in trains)
    assert len(load_samples("llama3-csr", path, n=3)) == 3
    with pytest.raises(DataError, match="ARC-Challenge file not found"):
        load_samples("llama3-csr", tmp_path / "missing.jsonl")
    with pytest.raises(UnknownNameError, match="valid splits"):
        load_samples("bert-qa", path)


def test_load_samples_reads_only_the_chosen_files(tmp_path: Path) -> None:
    ids = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 30)]
    train_ids = [i for i in ids if is_train_id(i)]
    eval_ids = [i for i in ids if not is_train_id(i)]
    for i in eval_ids:
        _save_png(tmp_path / "n01440764" / f"{i}.png", _rgb(1, 4, 4))
    for i in train_ids:  # unreadable: must not be opened for the evaluation set
        (tmp_path / "n01440764" / f"{i}.png").write_bytes(b"not an image")
    samples = load_samples("dinov2-cls", tmp_path, n=5)
    assert [s.id for s in samples] == eval_ids[:5]
    with pytest.raises(DataError, match="cannot read image"):
        load_samples("dinov2-cls", tmp_path, n=1, train=True)


@pytest.mark.parametrize("split", list(SPLITS))
def test_builtin_samples_are_deterministic_and_train_is_disjoint(split: str) -> None:
    n = 14
    a, b = builtin_samples(split, n), builtin_samples(split, n)
    train = builtin_samples(split, n, train=True)
    assert len(a) == len(train) == n
    assert [s.id for s in a] == [s.id for s in b]
    assert len({s.id for s in a}) == n
    assert {s.id for s in a}.isdisjoint({s.id for s in train})
    for x, y in zip(a, b, strict=True):
        if isinstance(x.inputs, np.ndarray):
            assert np.array_equal(x.inputs, y.inputs)
            assert x.inputs.dtype == np.uint8 and x.inputs.ndim == 3 and x.inputs.shape[2] == 3
        else:
            assert x.inputs == y.inputs
    if isinstance(a[0].inputs, np.ndarray):
        eval_hashes = {x.inputs.tobytes().__hash__() for x in a}
        assert eval_hashes.isdisjoint({x.inputs.tobytes().__hash__() for x in train})
    else:
        assert {x.inputs for x in a}.isdisjoint({x.inputs for x in train})


def test_builtin_questions_have_answers_among_choices() -> None:
    for s in builtin_samples("llama3-csr", 30) + builtin_samples("llama3-csr", 30, train=True):
        assert 0 <= s.target < len(s.inputs.choices) <= 5
        assert len(set(s.inputs.choices)) == len(s.inputs.choices)
    arithmetic = builtin_samples("llama3-csr", 20)[-1]
    q = arithmetic.inputs.question.removeprefix("What is ").removesuffix("?").split(" plus ")
    assert arithmetic.inputs.choices[arithmetic.target] == str(int(q[0]) + int(q[1]))
