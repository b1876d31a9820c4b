"""Split models: tail(head(x)) == unsplit, feature layouts, determinism, errors, paper loading path."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splitfc.common.errors import ShapeError, SplitfcError, UnknownNameError
from splitfc.common.models import build_split_model, get_split_model, tiny_samples
from splitfc.common.models._common import CheckpointNotFoundError
from splitfc.common.models.base import MultipleChoice, Prompt, TaskOutput
from splitfc.common.specs import SPLITS, get_split

SPLIT_IDS = list(SPLITS)
TINY_SHAPES = {
    "dinov2-cls": (65, 128),
    "dinov2-seg": (2, 65, 128),
    "dinov2-dpt": (2, 4, 81, 128),
    "llama3-csr": (None, 128),
    "sd3-tti": (16, 16, 16),
}


def assert_same_output(a: TaskOutput, b: TaskOutput) -> None:
    """Equal task outputs up to float tolerance (images: up to 1 level of rounding)."""
    assert a.task == b.task
    assert a.label == b.label
    if a.probs is not None:
        np.testing.assert_allclose(a.probs, b.probs, rtol=1e-4, atol=1e-6)
    if a.mask is not None:
        assert a.mask.shape == b.mask.shape
        assert np.mean(a.mask == b.mask) > 0.999
    if a.depth is not None:
        np.testing.assert_allclose(a.depth, b.depth, rtol=1e-4, atol=1e-4)
    if a.image is not None:
        assert a.image.shape == b.image.shape
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def models():
    return {split: get_split_model(split, "tiny") for split in SPLIT_IDS}


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_tail_of_head_equals_unsplit_model(models, split: str) -> None:
    model = models[split]
    for sample in tiny_samples(split, 2):
        features = model.head(sample.inputs)
        assert_same_output(model.tail(features), model.forward_unsplit(sample.inputs))


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_feature_shapes_follow_the_split_layout(models, split: str) -> None:
    model, spec = models[split], get_split(split)
    assert model.expected_shape() == TINY_SHAPES[split]
    shapes = set()
    for sample in tiny_samples(split, 3):
        features = model.head(sample.inputs)
        assert features.dtype == np.float32
        assert features.ndim == spec.rank
        spec.check_shape(features.shape)
        for got, want in zip(features.shape, model.expected_shape(), strict=True):
            assert want is None or got == want
        shapes.add(features.shape)
    if split == "llama3-csr":  # tokens vary with the prompt
        assert len(shapes) > 1


def test_task_outputs_have_the_documented_fields(models) -> None:
    sample = {s: tiny_samples(s, 1)[0] for s in SPLIT_IDS}
    cls = models["dinov2-cls"].forward_unsplit(sample["dinov2-cls"].inputs)
    assert cls.probs.shape == (1000,) and 0 <= cls.label < 1000
    assert cls.probs.sum() == pytest.approx(1.0, abs=1e-4)
    seg = models["dinov2-seg"].forward_unsplit(sample["dinov2-seg"].inputs)
    assert seg.mask.shape == (112, 112) and seg.mask.max() < 21
    dpt = models["dinov2-dpt"].forward_unsplit(sample["dinov2-dpt"].inputs)
    assert dpt.depth.shape == (112, 140) and dpt.depth.min() >= 0.001 and dpt.depth.max() <= 10.0
    csr = models["llama3-csr"].forward_unsplit(sample["llama3-csr"].inputs)
    assert csr.choices == ["A", "B", "C", "D", "E"] and csr.probs.shape == (5,)
    four = models["llama3-csr"].forward_unsplit(sample["llama3-csr"].inputs, num_choices=4)
    assert four.probs.shape == (4,) and four.choices == ["A", "B", "C", "D"]
    tti = models["sd3-tti"].forward_unsplit(sample["sd3-tti"].inputs)
    assert tti.image.shape == (128, 128, 3) and tti.image.dtype == np.uint8


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_tail_is_bit_identical_across_calls(models, split: str) -> None:
    model = models[split]
    features = model.head(tiny_samples(split, 1)[0].inputs)
    a, b = model.tail(features), model.tail(features.copy())
    for field in ("probs", "mask", "depth", "image"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or np.array_equal(x, y)
    assert a.label == b.label


def test_rebuilt_tiny_model_gives_identical_features(models) -> None:
    for split in ("dinov2-dpt", "llama3-csr"):
        fresh = build_split_model(split, "tiny")
        sample = tiny_samples(split, 1)[0]
        assert np.array_equal(fresh.head(sample.inputs), models[split].head(sample.inputs))


def test_features_are_identical_in_another_process(models) -> None:
    code = (
        "import hashlib\n"
        "from splitfc.common.models import get_split_model, tiny_samples\n"
        "for s in ('dinov2-cls', 'llama3-csr'):\n"
        "    m = get_split_model(s)\n"
        "    print(hashlib.sha256(m.head(tiny_samples(s, 1)[0].inputs).tobytes()).hexdigest())\n"
        "print(get_split_model('llama3-csr').letter_ids)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    here = [
        hashlib.sha256(models[s].head(tiny_samples(s, 1)[0].inputs).tobytes()).hexdigest()
        for s in ("dinov2-cls", "llama3-csr")
    ]
    assert out[:2] == here
    assert " ".join(out[2:]) == str(models["llama3-csr"].letter_ids)


def test_inputs_in_plain_forms(models) -> None:
    llama = models["llama3-csr"]
    q = MultipleChoice("Which is a fruit?", ("apple", "stone"))
    as_dict = {"question": "Which is a fruit?", "choices": ["apple", "stone"]}
    assert np.array_equal(llama.head(q), llama.head(as_dict))
    sd3 = models["sd3-tti"]
    import zlib

    assert np.array_equal(sd3.head("a red cube"), sd3.head(Prompt("a red cube", zlib.crc32(b"a red cube"))))
    assert not np.array_equal(sd3.head(Prompt("a red cube", 1)), sd3.head(Prompt("a red cube", 2)))


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("split", SPLIT_IDS)
def test_wrong_shaped_features_name_the_expected_shape(models, split: str) -> None:
    model = models[split]
    expected = model.expected_shape()
    wrong = tuple((s or 7) + 1 for s in expected)
    with pytest.raises(ShapeError) as err:
        model.tail(np.zeros(wrong, dtype=np.float32))
    text = str(err.value)
    assert "x".join("N" if s is None else str(s) for s in expected) in text
    with pytest.raises(ShapeError, match="expects a"):
        model.tail(np.zeros((3,) * (len(expected) + 1), dtype=np.float32))


def test_integer_features_are_rejected(models) -> None:
    with pytest.raises(ShapeError, match="float"):
        models["dinov2-cls"].tail(np.zeros((65, 128), dtype=np.int32))


def test_unknown_split_and_preset_name_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="valid splits: dinov2-cls, dinov2-seg"):
        get_split_model("resnet-cls", "tiny")
    with pytest.raises(UnknownNameError, match="valid presets: tiny, small, paper"):
        get_split_model("dinov2-cls", "huge")


def test_bad_inputs_are_clear_errors(models) -> None:
    with pytest.raises(SplitfcError, match="multiple-choice"):
        models["llama3-csr"].head("just text")
    with pytest.raises(SplitfcError, match="text prompt"):
        models["sd3-tti"].head(42)
    with pytest.raises(SplitfcError, match="HxWx3"):
        models["dinov2-cls"].head(np.zeros((4, 4, 4, 4), dtype=np.uint8))


def test_missing_checkpoint_folder_names_the_path(tmp_path: Path, dinov2_paper_dirs) -> None:
    missing = tmp_path / "nowhere" / "dinov2-giant"
    _, heads = dinov2_paper_dirs
    for split, extra in (("dinov2-cls", {"heads": heads}), ("llama3-csr", {}), ("sd3-tti", {})):
        with pytest.raises(CheckpointNotFoundError, match=f"checkpoint folder not found: {missing}"):
            build_split_model(split, "paper", source=missing, **extra)


def test_model_dir_setting_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitfc.common.settings import model_settings

    monkeypatch.setenv("SPLITFC_MODEL_DIR", str(tmp_path))
    model_settings.cache_clear()
    try:
        with pytest.raises(CheckpointNotFoundError, match=str(tmp_path / "Meta-Llama-3-8B")):
            build_split_model("llama3-csr", "paper")
    finally:
        monkeypatch.delenv("SPLITFC_MODEL_DIR")
        model_settings.cache_clear()


# ----------------------------------------------------------------------------- paper loading path


@pytest.fixture(scope="module")
def dinov2_paper_dirs(tmp_path_factory, models):
    """The tiny DINOv2 saved like the paper's: a from_pretrained folder plus the published head files."""
    import torch

    root = tmp_path_factory.mktemp("paper")
    models["dinov2-cls"].backbone.save_pretrained(root / "dinov2-giant")
    heads = root / "heads"
    heads.mkdir()
    cls = models["dinov2-cls"].task_head.state_dict()
    torch.save({"weight": cls["linear.weight"], "bias": cls["linear.bias"]}, heads / "dinov2_vitg14_linear_head.pth")
    for task, name in (("seg", "dinov2_vitg14_voc2012_linear_head.pth"), ("dpt", "dinov2_vitg14_nyu_linear4_head.pth")):
        state = {f"decode_head.{k}": v for k, v in models[f"dinov2-{task}"].task_head.state_dict().items()}
        torch.save({"meta": {"note": "mmseg layout"}, "state_dict": state}, heads / name)
    return root / "dinov2-giant", heads


@pytest.mark.parametrize("split", ["dinov2-cls", "dinov2-seg", "dinov2-dpt"])
def test_dinov2_paper_path_loads_saved_checkpoint_and_heads(models, dinov2_paper_dirs, split: str) -> None:
    from splitfc.common.models import dinov2

    folder, heads = dinov2_paper_dirs
    tiny = models[split]
    loaded = dinov2.build(split, "paper", source=folder, heads=heads, geometry=tiny.geometry)
    assert loaded.model_name == str(folder)
    sample = tiny_samples(split, 1)[0]
    features = loaded.head(sample.inputs)
    assert np.array_equal(features, tiny.head(sample.inputs))
    assert_same_output(loaded.tail(features), tiny.tail(features))


def test_dinov2_paper_geometry_gives_paper_token_counts(dinov2_paper_dirs) -> None:
    from splitfc.common.models import dinov2

    folder, heads = dinov2_paper_dirs
    image = tiny_samples("dinov2-cls", 1)[0].inputs
    expected = {"dinov2-cls": (257, 128), "dinov2-seg": (2, 1370, 128), "dinov2-dpt": (2, 4, 1611, 128)}
    for split, shape in expected.items():
        model = dinov2.build(split, "paper", source=folder, heads=heads)
        assert model.expected_shape() == shape
        assert model.head(image).shape == shape
        assert SPLITS[split].paper_shape[:-1] == shape[:-1]


def test_dinov2_missing_heads_name_the_path(dinov2_paper_dirs, tmp_path: Path) -> None:
    from splitfc.common.models import dinov2

    folder, _ = dinov2_paper_dirs
    head_file = tmp_path / "dinov2_vitg14_linear_head.pth"
    with pytest.raises(CheckpointNotFoundError, match=f"head file not found: {head_file}"):
        dinov2.build("dinov2-cls", "paper", source=folder, heads=tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=f"heads folder not found: {tmp_path / 'no'}"):
        dinov2.build("dinov2-cls", "paper", source=folder, heads=tmp_path / "no")


def test_llama3_paper_path_loads_saved_model_and_tokenizer(models, tmp_path: Path) -> None:
    from splitfc.common.models import llama3

    tiny = models["llama3-csr"]
    tiny.model.save_pretrained(tmp_path / "llama")
    tiny.tokenizer.save_pretrained(tmp_path / "llama")
    loaded = llama3.build("llama3-csr", "paper", source=tmp_path / "llama")
    assert loaded.letter_ids == tiny.letter_ids
    sample = tiny_samples("llama3-csr", 1)[0]
    features = loaded.head(sample.inputs)
    assert np.array_equal(features, tiny.head(sample.inputs))
    assert_same_output(loaded.tail(features), tiny.tail(features))


def test_sd3_paper_path_loads_saved_pipeline(models, tmp_path: Path) -> None:
    from splitfc.common.models import sd3

    tiny = models["sd3-tti"]
    tiny.pipeline.save_pretrained(tmp_path / "sd3")
    loaded = sd3.build("sd3-tti", "paper", source=tmp_path / "sd3", sampling=sd3.SAMPLING["tiny"])
    sample = tiny_samples("sd3-tti", 1)[0]
    features = loaded.head(sample.inputs)
    np.testing.assert_allclose(features, tiny.head(sample.inputs), rtol=1e-5, atol=1e-5)
    assert_same_output(loaded.tail(features), tiny.tail(features))
    assert sd3.SAMPLING["paper"].height // 8 == SPLITS["sd3-tti"].paper_shape[1]


@pytest.mark.parametrize("split", ["llama3-csr", "sd3-tti", "dinov2-cls"])
def test_head_and_tail_are_thread_safe(models, split: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = models[split]
    samples = tiny_samples(split, 4)
    expected = [model.head(s.inputs) for s in samples]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: model.head(s.inputs), samples * 2))
        outs = list(pool.map(model.tail, expected * 2))
    for g, e in zip(got, expected * 2, strict=True):
        assert np.array_equal(g, e)
    for o, e in zip(outs, expected * 2, strict=True):
        assert_same_output(o, model.tail(e))


def test_offline_hub_id_not_in_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitfc.common.settings import model_settings

    monkeypatch.setenv("SPLITFC_HF_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    model_settings.cache_clear()
    try:
        with pytest.raises(CheckpointNotFoundError, match=r"hub id meta-llama/Meta-Llama-3-8B \(HF cache, offline\)"):
            build_split_model("llama3-csr", "paper")
    finally:
        model_settings.cache_clear()


def test_dinov2_head_that_does_not_fit_is_a_clear_error(dinov2_paper_dirs, tmp_path: Path) -> None:
    import torch

    from splitfc.common.models import dinov2

    folder, _ = dinov2_paper_dirs
    torch.save({"weight": torch.zeros(1000, 10), "bias": torch.zeros(1000)}, tmp_path / dinov2.HEAD_FILES["cls"])
    with pytest.raises(SplitfcError, match="does not fit the backbone"):
        dinov2.build("dinov2-cls", "paper", source=folder, heads=tmp_path)
    torch.save({"state_dict": {}}, tmp_path / dinov2.HEAD_FILES["seg"])
    with pytest.raises(SplitfcError, match=r"lacks bn\.bias"):
        dinov2.build("dinov2-seg", "paper", source=folder, heads=tmp_path)
