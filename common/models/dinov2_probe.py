"""The ``small`` preset's Cls head: a linear probe on the DINOv2 ViT-S/14 trained on labeled textile images.

Head (paper Table 2): the backbone's final layer norm, then one linear layer on
[CLS token, mean of patch tokens] (2 x 384 inputs). Only the linear layer is trained, as
multinomial logistic regression (cross-entropy + L2 weight decay, full-batch L-BFGS from
zeros: deterministic) on standardised inputs; the standardisation is folded into the
linear layer afterwards, so the shipped head is exactly norm + linear. The weight decay is chosen
among `WEIGHT_DECAYS` by 5-fold cross-validation on the training images (never the held-back ones).

Data: conformal-clip-data 0.1.4's simulated textile images (`splitfc.common.data.textile_images`,
3 classes: global defect, local defect, nominal). Fixed split: the images whose id
``textile-<class>-<number>`` hashes into the training fifth (`splitfc.common.data.is_train_id`,
``crc32(id) % 5 == 0``: 372 images) train the probe; the other 1,628 are held back.

Measured (``SPLITFC_TORCH_THREADS=1 splitfc train-probe --split dinov2-cls --preset small
--eval-samples 1628 -o probe.safetensors``; its head equals the shipped one bit for bit): CV top-1
79.3/79.8/79.0/78.0% for weight decay 1e-3/1e-2/0.1/1 (1e-2 chosen), train 96.8%, held back
81.3% top-1 on all 1,628 held-back images (majority class 50.0%, chance 33%).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import Sample

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)
"""Candidate L2 penalties on the standardised-input weights (mean cross-entropy + decay/2 * |W|^2);
`select_weight_decay` picks one by cross-validation on the training images only."""
WEIGHT_DECAY = 1e-3
"""The penalty of the first shipped probe (before cross-validation; kept as a fallback default)."""
CV_FOLDS = 5
MAX_ITERATIONS = 500
BATCH = 16
"""Images per backbone forward while extracting probe inputs."""
DATASET = "conformal-clip-data 0.1.4 simulated textile images"


@dataclass
class ProbeResult:
    """A trained probe: ``weight`` (classes, 2 x channels) float32, ``bias`` (classes,) and figures."""

    weight: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]
    train_samples: int
    train_accuracy: float
    """Percent of training images classified right by the folded head."""
    extract_seconds: float
    fit_seconds: float
    metadata: dict[str, str] = field(default_factory=dict)


def probe_inputs_batch(model: Any, images: Sequence[Any], batch: int = BATCH,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(n, 2 x channels) float32 probe inputs of ``images`` through ``model`` (a small Cls `Dinov2Split`):
    the same computation as ``probe_inputs(model, model.head(image))``, ``batch`` images per forward."""
    import torch

    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        pixels = torch.cat([model.prepare(image) for image in chunk])
        with torch.no_grad():
            (hidden,) = model._block_outputs(pixels)
            normed = model.backbone.layernorm(hidden)
            out.append(torch.cat([normed[:, 0], normed[:, 1:].mean(dim=1)], dim=-1).float().numpy())
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 2 * model.channels), dtype=np.float32)


def fit_linear(inputs: np.ndarray, labels: np.ndarray, classes: int, weight_decay: float = WEIGHT_DECAY,
               max_iterations: int = MAX_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, returned folded onto the raw inputs: ``(weight, bias)`` with
    logits = ``inputs @ weight.T + bias``. ``inputs`` (n, d) float32, ``labels`` (n,) ints in 0..classes-1.

    Inputs are standardised per dimension (training mean/std), the weights fit from zeros by L-BFGS
    (strong Wolfe line search) on mean cross-entropy + ``weight_decay``/2 |W|^2; deterministic.
    """
    import torch

    if inputs.ndim != 2 or len(inputs) != len(labels) or len(inputs) == 0:
        raise SplitfcError(f"probe inputs {inputs.shape} and labels {labels.shape} do not match")
    if labels.min() < 0 or labels.max() >= classes:
        raise SplitfcError(f"labels must lie in 0..{classes - 1}")
    x = torch.from_numpy(inputs.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.int64))
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iterations, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny products: one thread is ~15x faster on a busy 2-core machine
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        weight = w / std
        bias = b - weight @ mean
    return weight.float().numpy(), bias.float().numpy()


def cv_folds(ids: Sequence[str], folds: int = CV_FOLDS) -> np.ndarray:
    """Fold index of each sample id: ``(crc32(id) // 5) % folds`` (independent of the train/held-back
    rule ``crc32(id) % 5``, so the training fifth spreads over all folds)."""
    return np.asarray([(zlib.crc32(i.encode()) // 5) % folds for i in ids])


def select_weight_decay(inputs: np.ndarray, labels: np.ndarray, classes: int, ids: Sequence[str],
                        grid: Sequence[float] = WEIGHT_DECAYS, folds: int = CV_FOLDS) -> tuple[float, dict[str, float]]:
    """The weight decay of ``grid`` with the best ``folds``-fold cross-validated top-1 on the training
    inputs (ties: the larger decay), and each candidate's CV top-1 in percent (keys ``f"{decay:g}"``)."""
    fold = cv_folds(ids, folds)
    scores: dict[str, float] = {}
    for decay in grid:
        right = 0
        for k in range(folds):
            test = fold == k
            if not test.any() or test.all():
                continue
            weight, bias = fit_linear(inputs[~test], labels[~test], classes, decay)
            right += int(np.sum(np.argmax(inputs[test] @ weight.T + bias, axis=1) == labels[test]))
        scores[f"{decay:g}"] = 100.0 * right / len(labels)
    best = max(grid, key=lambda d: (scores[f"{d:g}"], d))
    return float(best), scores


def train_probe(model: Any, samples: Sequence[Sample], classes: tuple[str, ...],
                weight_decay: float | None = None, progress: Callable[[int], None] | None = None) -> ProbeResult:
    """Train the linear probe of ``model`` on labeled ``samples`` (targets: class indices into ``classes``).

    ``weight_decay`` None: chosen by `select_weight_decay` (CV on ``samples`` only); the CV scores go
    into ``metadata["cv_top1"]``.
    """
    import json

    if not samples or any(s.target is None for s in samples):
        raise SplitfcError("train-probe needs labeled samples")
    labels = np.asarray([int(s.target) for s in samples])
    start = time.perf_counter()
    inputs = probe_inputs_batch(model, [s.inputs for s in samples], progress=progress)
    extracted = time.perf_counter()
    metadata: dict[str, str] = {}
    if weight_decay is None:
        weight_decay, scores = select_weight_decay(inputs, labels, len(classes), [s.id for s in samples])
        metadata["cv_top1"] = json.dumps(scores)
    weight, bias = fit_linear(inputs, labels, len(classes), weight_decay)
    fitted = time.perf_counter()
    predicted = np.argmax(inputs @ weight.T + bias, axis=1)
    metadata["weight_decay"] = f"{weight_decay:g}"
    return ProbeResult(weight, bias, tuple(classes), len(samples), 100.0 * float(np.mean(predicted == labels)),
                       extracted - start, fitted - extracted, metadata)


def save_probe(result: ProbeResult, path: Path, metadata: dict[str, str]) -> None:
    """Write ``weight``/``bias`` (float32) and string ``metadata`` (plus ``classes``) as safetensors."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**metadata, "classes": ",".join(result.classes)}
    save_file({"weight": np.ascontiguousarray(result.weight, dtype=np.float32),
               "bias": np.ascontiguousarray(result.bias, dtype=np.float32)}, str(path), metadata=meta)
