"""Task metrics, each in one place, and `score_outputs` used by the edge report and the benchmark.

Accuracy-like metrics are in percent like the paper (100 = all agree). The reference of a
score is either ground truth (class id, mask, depth map, answer index, image) or, when
ground truth is absent (the ``tiny`` preset), the output of the same pipeline on the
uncompressed features: the paper's "Original" row then scores 100 accuracy, 100 mIoU,
0 RMSE, 0 FID (PSNR: `PSNR_CAP` dB), and accuracy means agreement with that pipeline.
FID (TF-Inception network, pytorch-fid distance) is in `splitfc.common.fid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from splitfc.common.fid import FidUnavailableError as FidUnavailableError  # re-export: FID lives in common/fid.py
from splitfc.common.fid import fid as fid
from splitfc.common.models.base import TaskOutput
from splitfc.common.specs import get_split

PSNR_CAP = 100.0
"""PSNR reported for identical images (instead of infinity, so results stay plain JSON)."""
IGNORE_INDEX = 255
MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0


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
