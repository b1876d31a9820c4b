"""Helpers shared by the serving tests (cloud in a thread, blocking models, metric reads)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from splitfc.cloud.server import ServerThread
from splitfc.cloud.settings import CloudSettings
from splitfc.common.bitstream import encode_features
from splitfc.common.models import get_split_model, tiny_samples
from splitfc.common.models.base import SplitModel, TaskOutput
from splitfc.common.specs import SPLITS

ALL_SPLITS = tuple(SPLITS)


def cloud_settings(**kw: Any) -> CloudSettings:
    """Settings of a test server: free ports, no request log unless asked."""
    base: dict[str, Any] = {"grpc_port": 0, "http_port": 0, "log_requests": False, "drain_seconds": 5.0}
    base.update(kw)
    return CloudSettings(**base)


def raw_bitstream(split: str, index: int = 0) -> tuple[bytes, Any]:
    """A lossless (raw float32) serialized bitstream of tiny sample ``index`` and that sample."""
    sample = tiny_samples(split, index + 1)[index]
    features = get_split_model(split, "tiny").head(sample.inputs)
    return encode_features(features, split, "raw", 0).SerializeToString(), sample


class BlockingModel(SplitModel):
    """A real model whose ``tail`` waits for ``release`` (tests of queueing, deadlines, drain)."""

    def __init__(self, inner: SplitModel, release: threading.Event, entered: threading.Semaphore) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.preset = inner.preset
        self.release = release
        self.entered = entered

    def head(self, inputs: Any) -> np.ndarray:
        return self.inner.head(inputs)

    def tail(self, features: np.ndarray) -> TaskOutput:
        self.entered.release()
        if not self.release.wait(60):
            raise RuntimeError("test never released the blocking model")
        return self.inner.tail(features)

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        return self.inner.forward_unsplit(inputs)

    def expected_shape(self) -> tuple[int | None, ...]:
        return self.inner.expected_shape()


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``; return its last value."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return bool(value)
        time.sleep(interval)


__all__ = ["ALL_SPLITS", "BlockingModel", "ServerThread", "cloud_settings", "raw_bitstream", "wait_until"]
