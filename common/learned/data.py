"""Training frames: feature tensors -> normalised packed frames and their range-width maps.

A frame is the packed 10-bit frame of paper Section 6.1.1 (Hyperprior
truncation column of Table 4) divided by ``2**bit_depth - 1``, so it lies in
[0, 1]. Its ``width`` map holds, per frame pixel, the width of the truncation
range the pixel came from (one value, or one per Dpt layer): the feature-domain
error of a pixel is ``(x_hat - x) * width``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.preprocess import DEFAULT_BIT_DEPTH, FramePlan, pack_frame
from splitfc.common.specs import SplitSpec, TruncationColumn

SYNTHETIC_SHAPES: dict[str, tuple[int, ...]] = {
    "dinov2-cls": (65, 128),
    "dinov2-seg": (2, 65, 128),
    "dinov2-dpt": (2, 4, 65, 128),
    "llama3-csr": (48, 128),
    "sd3-tti": (16, 32, 32),
}
"""Feature shapes of the synthetic stand-ins (tiny-preset sized)."""


@dataclass
class Frame:
    """One normalised training frame and its feature-domain width map (both float32, H x W)."""

    x: np.ndarray
    width: np.ndarray


def width_map(spec: SplitSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Per-pixel truncation-range width of the packed frame of a tensor of ``shape``."""
    ranges = spec.ranges(TruncationColumn.HYPERPRIOR)
    widths = np.asarray([hi - lo for lo, hi in ranges], dtype=np.float32)
    if len(ranges) == 1:
        full = np.full(shape, widths[0], dtype=np.float32)
    else:
        b = [1] * len(shape)
        assert spec.group_axis is not None
        b[spec.group_axis] = len(ranges)
        full = np.ascontiguousarray(np.broadcast_to(widths.reshape(b), shape))
    return np.ascontiguousarray(pack_frame(full, spec.packing))


def to_frame(features: np.ndarray, spec: SplitSpec, bit_depth: int = DEFAULT_BIT_DEPTH) -> Frame:
    """Pre-process one feature tensor into a normalised frame."""
    spec.check_shape(features.shape)
    plan = FramePlan(spec, tuple(features.shape), spec.ranges(TruncationColumn.HYPERPRIOR), bit_depth)
    q = plan.to_frame(features)
    return Frame(q.astype(np.float32) / ((1 << bit_depth) - 1), width_map(spec, tuple(features.shape)))


def feature_files(directory: Path) -> list[Path]:
    """The ``.npy`` feature files of a directory, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SplitfcError(f"feature directory {directory} does not exist")
    files = sorted(directory.glob("*.npy"))
    if not files:
        raise SplitfcError(f"feature directory {directory} holds no .npy files")
    return files


def load_features(path: Path) -> np.ndarray:
    """Load a ``.npy`` tensor without pickles, as float32."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as exc:
        raise SplitfcError(f"{path} is not a readable .npy array: {exc}") from None


def load_frames(files: list[Path], spec: SplitSpec) -> list[Frame]:
    """Frames of the feature files (each checked against the split's layout)."""
    return [to_frame(load_features(f), spec) for f in files]


def synthetic_features(spec: SplitSpec, rng: np.random.Generator, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A heavy-tailed stand-in for a split's features (for tests and development only).

    Per-channel scales (log-normal) and offsets, Student-t noise with 3 degrees of
    freedom, a few outlier channels, smooth spatial structure for ``sd3-tti``.
    """
    shape = shape or SYNTHETIC_SHAPES[spec.id]
    if spec.id == "sd3-tti":
        c, h, w = shape
        base = rng.standard_normal((c, h // 4 + 1, w // 4 + 1))
        smooth = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)[:, :h, :w]
        return (smooth + 0.3 * rng.standard_t(3, size=shape)).astype(np.float32)
    channels = shape[-1]
    scale = rng.lognormal(mean=-0.3, sigma=0.5, size=channels)
    offset = 0.3 * rng.standard_normal(channels)
    x = rng.standard_t(3, size=shape) * scale + offset
    outliers = rng.choice(channels, size=max(1, channels // 64), replace=False)
    x[..., outliers] *= 20.0
    if spec.group_axis is not None:
        b = [1] * len(shape)
        b[spec.group_axis] = shape[spec.group_axis]
        x = x * np.asarray([0.3, 0.8, 2.0, 4.0][: shape[spec.group_axis]]).reshape(b)
    return x.astype(np.float32)
