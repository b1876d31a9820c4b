"""Task metrics, each in one place, and `score_outputs` used by the edge report and the benchmark.

Accuracy-like metrics are in percent like the paper (100 = all agree). The reference of a
score is either ground truth (class id, mask, depth map, answer index, image) or, when
ground truth is absent (the ``tiny`` preset), the output of the same pipeline on the
uncompressed features: the paper's "Original" row then scores 100 accuracy, 100 mIoU,
0 RMSE, 0 FID (PSNR: `PSNR_CAP` dB), and accuracy means agreement with that pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import TaskOutput
from splitfc.common.specs import get_split

PSNR_CAP = 100.0
"""PSNR reported for identical images (instead of infinity, so results stay plain JSON)."""
IGNORE_INDEX = 255
MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0


class FidUnavailableError(SplitfcError, RuntimeError):
    """FID cannot be computed here (no Inception weights)."""


def _check_lengths(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} references")
    if not a:
        raise ValueError("no samples to score")


def top1_accuracy(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Percent of predicted class ids equal to the reference ids."""
    _check_lengths(predicted, reference)
    return 100.0 * float(np.mean(np.asarray(predicted) == np.asarray(reference)))


def csr_accuracy(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Percent of multiple-choice answers (choice indices) equal to the reference answers."""
    return top1_accuracy(predicted, reference)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array (masks, depth maps) to ``shape``."""
    if array.shape == tuple(shape):
        return array
    rows = (np.arange(shape[0]) * array.shape[0] / shape[0]).astype(np.int64)
    cols = (np.arange(shape[1]) * array.shape[1] / shape[1]).astype(np.int64)
    return array[rows[:, None], cols[None, :]]


def miou(
    predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Mean intersection over union in percent, accumulated over the data set (mmseg style).

    Classes that appear in neither prediction nor reference are left out of the mean;
    reference pixels equal to ``ignore_index`` are not counted. References are resized
    (nearest) to the prediction's size.
    """
    _check_lengths(predicted, reference)
    if num_classes is None:
        num_classes = 1 + max(
            int(max(np.max(p), np.max(np.where(r == ignore_index, 0, r)))) for p, r in zip(predicted, reference,
                                                                                          strict=True)
        )
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    for p, r in zip(predicted, reference, strict=True):
        p = np.asarray(p).astype(np.int64)
        r = resize_nearest(np.asarray(r).astype(np.int64), p.shape)
        valid = r != ignore_index
        p, r = p[valid], r[valid]
        area_p = np.bincount(p, minlength=num_classes)[:num_classes]
        area_r = np.bincount(r, minlength=num_classes)[:num_classes]
        area_i = np.bincount(p[p == r], minlength=num_classes)[:num_classes]
        inter += area_i
        union += area_p + area_r - area_i
    present = union > 0
    if not present.any():
        raise ValueError("no valid pixels to score")
    return 100.0 * float(np.mean(inter[present] / union[present]))


def rmse(
    predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray],
    min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH,
) -> float:
    """Root mean squared depth error in metres, per image over valid reference pixels, averaged.

    Valid: ``min_depth < reference < max_depth``. References are resized (nearest) to the prediction.
    """
    _check_lengths(predicted, reference)
    errors = []
    for p, r in zip(predicted, reference, strict=True):
        p = np.asarray(p, dtype=np.float64)
        r = resize_nearest(np.asarray(r, dtype=np.float64), p.shape)
        valid = (r > min_depth) & (r < max_depth)
        if not valid.any():
            raise ValueError("a reference depth map has no valid pixels")
        errors.append(math.sqrt(float(np.mean((p[valid] - r[valid]) ** 2))))
    return float(np.mean(errors))


def psnr(predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], max_value: float = 255.0) -> float:
    """Mean PSNR in dB over images (HxWx3 uint8); identical images count as `PSNR_CAP`."""
    _check_lengths(predicted, reference)
    values = []
    for p, r in zip(predicted, reference, strict=True):
        p, r = np.asarray(p, dtype=np.float64), np.asarray(r, dtype=np.float64)
        if p.shape != r.shape:
            raise ValueError(f"image shapes differ: {p.shape} vs {r.shape}")
        mse = float(np.mean((p - r) ** 2))
        values.append(PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(max_value**2 / mse)))
    return float(np.mean(values))


def fid_unavailable_reason(weights: Path | None = None) -> str | None:
    """None when FID can run, else why not."""
    from splitfc.common.settings import model_settings

    path = weights if weights is not None else model_settings().fid_inception_weights
    if path is None:
        return ("FID needs Inception-v3 weights and none are configured "
                "(set SPLITFC_FID_INCEPTION_WEIGHTS to a torchvision inception_v3 state dict)")
    if not Path(path).is_file():
        return f"FID needs Inception-v3 weights: file not found: {path}"
    return None


@lru_cache(maxsize=2)
def _inception(weights: Path) -> Any:
    import torch
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise FidUnavailableError(f"cannot load Inception-v3 weights from {weights}: {exc}") from None
    model.fc = torch.nn.Identity()
    return model.eval()


def inception_features(images: Sequence[np.ndarray], weights: Path) -> np.ndarray:
    """2048-d pool features of HxWx3 uint8 images (resized to 299 x 299)."""
    import torch

    model = _inception(weights)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            feats.append(model((x - mean) / std)[0].double().numpy())
    return np.stack(feats)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """``trace(sqrtm(cov(a) @ cov(b)))`` of two sample sets (rows = samples), without a general sqrtm.

    With fewer samples than dimensions it is the nuclear norm of ``a_c @ b_c.T`` (centred)
    over ``sqrt((n_a - 1)(n_b - 1))``; otherwise ``sum(sqrt(eig(S_a cov_b S_a)))`` with
    ``S_a = cov_a ** 0.5``. Both are exact for covariance matrices (symmetric, PSD).
    """
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    scale = math.sqrt((len(a) - 1) * (len(b) - 1))
    if min(len(a), len(b)) <= a.shape[1]:
        return float(np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / scale)
    root = _psd_sqrt(ac.T @ ac / (len(a) - 1))
    inner = root @ (bc.T @ bc / (len(b) - 1)) @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples, 2+ each)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    trace_a = float(np.sum(np.var(a, axis=0, ddof=1)))
    trace_b = float(np.sum(np.var(b, axis=0, ddof=1)))
    value = float(np.sum((mu_a - mu_b) ** 2)) + trace_a + trace_b - 2.0 * trace_sqrt_product(a, b)
    return max(0.0, value)


def fid(predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], weights: Path | None = None) -> float:
    """Fréchet Inception Distance between two image sets (needs at least 2 images each).

    Raises `FidUnavailableError` saying why when no Inception weights are configured.
    Identical sets score exactly 0.
    """
    reason = fid_unavailable_reason(weights)
    if reason is not None:
        raise FidUnavailableError(reason)
    from splitfc.common.settings import model_settings

    path = Path(weights if weights is not None else model_settings().fid_inception_weights)  # type: ignore[arg-type]
    if len(predicted) < 2 or len(reference) < 2:
        raise ValueError("FID needs at least 2 images per set")
    if len(predicted) == len(reference) and all(
        np.array_equal(p, r) for p, r in zip(predicted, reference, strict=True)
    ):
        return 0.0
    return frechet_distance(inception_features(predicted, path), inception_features(reference, path))


# --------------------------------------------------------------------------------------------


def score_outputs(split_id: str, outputs: Sequence[TaskOutput], references: Sequence[Any]) -> dict[str, Any]:
    """Score task outputs of a split against references with its task's metric (paper Table 2).

    ``references``: `TaskOutput`s of the same pipeline on uncompressed features, or ground
    truth (class ids, masks, depth maps in metres, answer indices, images or image paths).
    Returns ``{"metric", "value", "higher_is_better", "reference", "samples"}``; TTI adds
    ``psnr_db`` where it applies and ``fid_unavailable`` (the reason) when FID cannot run.
    """
    from splitfc.common.tasks import get_task

    task = get_task(get_split(split_id).task)
    _check_lengths(outputs, references)
    if all(isinstance(r, TaskOutput) for r in references):
        ref, kind = [getattr(r, task.output_field) for r in references], "uncompressed pipeline"
    elif any(isinstance(r, TaskOutput) for r in references):
        raise ValueError("references mix pipeline outputs and ground truth")
    elif any(r is None for r in references):
        raise ValueError("a reference is missing (no ground truth): score against the uncompressed pipeline")
    else:
        ref, kind = task.ground_truth(references), "ground truth"
    return {"reference": kind, "samples": len(outputs), **task.score(outputs, ref, kind)}
