"""The hyperprior coding engine: checkpoint cache, frame -> payload and back.

Kept apart from `splitfc.common.codecs.hyperprior` so that importing the codec
registry does not import torch and CompressAI; the codec loads this on first use.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from splitfc.common.learned.checkpoint import CheckpointError, HyperpriorConfig, load_checkpoint
from splitfc.common.learned.model import (
    FeatureHyperprior,
    deterministic_cpu,
    frame_tensor,
    tiles,
    y_symbols_for,
    z_shape_for,
    z_symbols_for,
)
from splitfc.common.learned.payload import pack_payload, unpack_payload

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int, int], tuple[FeatureHyperprior, HyperpriorConfig]] = {}


def load_cached(path: Path, split: str) -> tuple[FeatureHyperprior, HyperpriorConfig]:
    """`load_checkpoint` with a per-process cache keyed by path, size and mtime."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(
            f"no hyperprior checkpoint for split {split} at {path} (train one with splitfc train-codec, "
            "or point SPLITFC_HYPERPRIOR_DIR at a checkpoint folder)"
        ) from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_checkpoint(path, expect_split=split)
        return _CACHE[key]


def _zero_padded(data: bytes, symbols: int) -> bytes:
    """``data`` followed by zeros: bounds how far a hostile rANS stream can read past its end."""
    return data + bytes(16 * len(data) + 8 * symbols + 64)


def _levels(x_hat: torch.Tensor, height: int, width: int, levels: int) -> np.ndarray:
    """The float64 synthesis of a padded tile, cropped, clamped to [0, 1] and rounded to integer levels."""
    return torch.round(x_hat[0, 0, :height, :width].clamp(0, 1) * levels).numpy().astype(np.uint16)


def encode_with(
    model: FeatureHyperprior, cfg: HyperpriorConfig, frame: np.ndarray, bit_depth: int
) -> tuple[bytes, np.ndarray]:
    """Code a uint16 frame with a loaded model; return the payload (layout in `payload`) and the frame a
    decoder reconstructs from it, computed from the encoder's own quantized latents."""
    h, w = frame.shape
    levels = (1 << bit_depth) - 1
    recon = np.empty((h, w), dtype=np.uint16)
    strings = []
    with _LOCK, deterministic_cpu():
        for top, left, th, tw in tiles(h, w, cfg.tile):
            y, z, x_hat = model.compress_padded(frame_tensor(frame[top:top + th, left:left + tw], levels))
            strings.append((y, z))
            recon[top:top + th, left:left + tw] = _levels(x_hat, th, tw, levels)
    return pack_payload(cfg.tile, strings), recon


def decode_with(model: FeatureHyperprior, payload: bytes, height: int, width: int, bit_depth: int) -> np.ndarray:
    """Decode a payload into a uint16 frame of ``height`` x ``width``."""
    tile, strings = unpack_payload(payload, lambda t: len(tiles(height, width, t)))
    levels = (1 << bit_depth) - 1
    out = np.empty((height, width), dtype=np.uint16)
    with _LOCK, deterministic_cpu():
        for (top, left, th, tw), (y, z) in zip(tiles(height, width, tile), strings, strict=True):
            y_pad = _zero_padded(y, y_symbols_for(th, tw, model.M))
            z_pad = _zero_padded(z, z_symbols_for(th, tw, model.N))
            x_hat = model.decompress_padded(y_pad, z_pad, z_shape_for(th, tw))
            out[top:top + th, left:left + tw] = _levels(x_hat, th, tw, levels)
    return out
