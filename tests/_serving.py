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


def rss_mib() -> float:
    """This process's resident memory, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / (1 << 20)


def trim_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``) so that RSS shows live memory, not the
    allocator's cache of freed pages; False where there is no glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def raw_calls(target: str, max_bytes: int = 64 << 20, options: tuple[tuple[str, Any], ...] = ()
              ) -> tuple[Any, Any, Any]:
    """(Infer, InferChunked, InferStream) multi-callables that send bytes as they are: a hostile client
    built from the .proto files, free to send anything (``options``: more gRPC channel options)."""
    import grpc

    from splitfc.v1 import service_pb2 as svc

    channel = grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes),
                         *options],
    )
    path = "/splitfc.v1.SplitInference/"
    same = {"request_serializer": lambda b: b, "response_deserializer": svc.InferResponse.FromString}
    return (channel.unary_unary(path + "Infer", **same), channel.stream_unary(path + "InferChunked", **same),
            channel.stream_stream(path + "InferStream", **same))


__all__ = [
    "ALL_SPLITS", "BlockingModel", "ServerThread", "cloud_settings", "raw_bitstream", "raw_calls", "rss_mib",
    "trim_heap", "wait_until",
]
