"""The ``small`` preset's Cls head: a linear probe on the DINOv2 ViT-S/14 trained on labeled textile images.

Head (paper Table 2): the backbone's final layer norm, then one linear layer on
[CLS token, mean of patch tokens] (2 x 384 inputs). Only the linear layer is trained, as
multinomial logistic regression (cross-entropy + L2 weight decay, full-batch L-BFGS from
zeros: deterministic) on standardised inputs; the standardisation is folded into the
linear layer afterwards, so the shipped head is exactly norm + linear.

Data: conformal-clip-data 0.1.4's simulated textile images (`splitfc.common.data.textile_images`,
3 classes: global defect, local defect, nominal). Fixed split: the images whose id
``textile-<class>-<number>`` hashes into the training fifth (`splitfc.common.data.is_train_id`,
``crc32(id) % 5 == 0``: 372 images) train the probe; the other 1,628 are held back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import Sample

WEIGHT_DECAY = 1e-3
"""L2 penalty on the standardised-input weights (mean cross-entropy + WEIGHT_DECAY/2 * |W|^2)."""
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

    opt.step(closure)
    with torch.no_grad():
        weight = w / std
        bias = b - weight @ mean
    return weight.float().numpy(), bias.float().numpy()


def train_probe(model: Any, samples: Sequence[Sample], classes: tuple[str, ...],
                weight_decay: float = WEIGHT_DECAY, progress: Callable[[int], None] | None = None) -> ProbeResult:
    """Train the linear probe of ``model`` on labeled ``samples`` (targets: class indices into ``classes``)."""
    if not samples or any(s.target is None for s in samples):
        raise SplitfcError("train-probe needs labeled samples")
    labels = np.asarray([int(s.target) for s in samples])
    start = time.perf_counter()
    inputs = probe_inputs_batch(model, [s.inputs for s in samples], progress=progress)
    extracted = time.perf_counter()
    weight, bias = fit_linear(inputs, labels, len(classes), weight_decay)
    fitted = time.perf_counter()
    predicted = np.argmax(inputs @ weight.T + bias, axis=1)
    return ProbeResult(weight, bias, tuple(classes), len(samples), 100.0 * float(np.mean(predicted == labels)),
                       extracted - start, fitted - extracted)


def save_probe(result: ProbeResult, path: Path, metadata: dict[str, str]) -> None:
    """Write ``weight``/``bias`` (float32) and string ``metadata`` (plus ``classes``) as safetensors."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**metadata, "classes": ",".join(result.classes)}
    save_file({"weight": np.ascontiguousarray(result.weight, dtype=np.float32),
               "bias": np.ascontiguousarray(result.bias, dtype=np.float32)}, str(path), metadata=meta)
