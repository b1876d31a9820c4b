"""Shared test set-up: fast codec presets and heavy-tailed feature data."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pytest

# Tests check behaviour, not compression efficiency: the fastest encoder presets
# keep the suite inside its time budget on 2 cores. Set before any settings are read.
os.environ.setdefault("SPLITFC_VVENC_PRESET", "faster")
os.environ.setdefault("SPLITFC_X265_PRESET", "ultrafast")


@lru_cache(maxsize=8)
def _heavy_features(shape: tuple[int, ...], seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    offsets = rng.standard_t(2.5, channels) * scale
    spread = np.abs(rng.standard_t(3, channels)) * 0.3 + 0.05
    x = (offsets + spread * rng.standard_t(4, shape)).astype(np.float32)
    x.flags.writeable = False
    return x


def heavy_features(shape: tuple[int, ...], seed: int = 0, scale: float = 3.0) -> np.ndarray:
    """Heavy-tailed float32 features shaped like a transformer's: Student-t per-channel
    offsets (the last axis) plus Student-t token noise, so values reach far outside
    the truncation ranges and there is vertical redundancy as in the paper's Fig. 3.
    Cached per (shape, seed, scale); the array is read-only."""
    return _heavy_features(tuple(int(s) for s in shape), seed, scale)


@pytest.fixture
def make_features():
    """Factory fixture: ``make_features(shape, seed=0)`` -> heavy-tailed float32 array."""
    return heavy_features


class _ArgmaxModel:
    """Stand-in tail for benchmark tests: class = argmax of the channel means (changes when coding hurts)."""

    def tail(self, features: np.ndarray):  # -> TaskOutput
        from splitfc.common.models.base import TaskOutput

        means = features.mean(axis=0)
        return TaskOutput(task="cls", label=int(np.argmax(means)), probs=means.astype(np.float32))


@pytest.fixture
def fake_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's task layer with a stand-in model and an agreement metric (no real models)."""
    from splitfc.common.bench import task

    def accuracy(split: str, outputs: list, refs: list) -> task.Score:
        value = 100.0 * float(np.mean([o.label == r.label for o, r in zip(outputs, refs, strict=True)]))
        return task.Score(value, "Accuracy", True)

    monkeypatch.setattr(task, "split_model", lambda split, preset: _ArgmaxModel())
    monkeypatch.setattr(task, "score", accuracy)
