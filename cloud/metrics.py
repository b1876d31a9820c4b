"""Prometheus metrics of one cloud server (its own `CollectorRegistry`).

Label values come from closed sets (known splits and codecs, gRPC status
names, stage names): hostile input cannot grow the label space.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from splitfc.common.codecs import CODECS
from splitfc.common.specs import SPLITS

STAGES = ("queue", "decode", "tail", "total")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BYTES_BUCKETS = tuple(float(1 << k) for k in range(8, 31, 2))  # 256 B .. 1 GiB
BPFP_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
LIMITS = (
    "message_bytes", "bitstream_bytes", "elements", "decode_time", "streams_per_client", "queue", "upload_bytes",
    "upload_idle", "upload_bytes_per_client", "upload_rate", "upload_time", "stream_write", "answer_bytes",
)
"""Label values of ``splitfc_cloud_limit_rejections_total``."""
UNKNOWN = "unknown"
"""Label value of a split or codec that is missing or not one of ours."""

__all__ = ["CONTENT_TYPE_LATEST", "CloudMetrics"]


def split_label(split: str | None) -> str:
    return split if split in SPLITS else UNKNOWN


def codec_label(codec: str | None) -> str:
    return codec if codec in CODECS else UNKNOWN


def auth_failures_counter(registry: CollectorRegistry) -> Counter:
    """``splitfc_cloud_auth_failures_total`` (surface, reason): also the one metric of a supervisor of
    several engine processes, which serves their HTTP side (`splitfc.cloud.processes`)."""
    return Counter(
        "splitfc_cloud_auth_failures", "Calls refused for a missing or invalid bearer token (nothing decoded).",
        ["surface", "reason"], registry=registry,
    )


def multiprocess_exposition(path: str) -> bytes:
    """The Prometheus text format of every process writing to the multiprocess directory ``path``
    (prometheus_client's `MultiProcessCollector`: counters and histograms summed over live and dead
    processes, gauges by their ``multiprocess_mode``)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry)


class CloudMetrics:
    """The server's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "splitfc_cloud_requests", "Inference requests by split, codec and final gRPC status.",
            ["split", "codec", "status"], registry=r,
        )
        self.stage_seconds = Histogram(
            "splitfc_cloud_stage_seconds", "Server time per stage (queue, decode, tail, total) of successful requests.",
            ["split", "stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.bitstream_bytes = Histogram(
            "splitfc_cloud_bitstream_bytes", "Serialized bitstream size of accepted requests.",
            ["split", "codec"], buckets=BYTES_BUCKETS, registry=r,
        )
        self.payload_bytes = Counter(
            "splitfc_cloud_payload_bytes", "Codec payload bytes received (the part BPFP counts).",
            ["split", "codec"], registry=r,
        )
        self.bpfp = Histogram(
            "splitfc_cloud_bpfp", "Bits per feature point of accepted requests.",
            ["split", "codec"], buckets=BPFP_BUCKETS, registry=r,
        )
        # multiprocess_mode: how /metrics of several engine processes (cloud/processes.py) combines a
        # gauge across the live ones; ignored in a single process.
        self.inflight = Gauge(
            "splitfc_cloud_inflight_requests", "Requests inside the server now.", registry=r,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "splitfc_cloud_queued_requests", "Requests waiting for a worker now.", registry=r,
            multiprocess_mode="livesum",
        )
        self.decode_errors = Counter(
            "splitfc_cloud_decode_errors", "Bitstreams rejected or not decodable, by reason.",
            ["split", "codec", "reason"], registry=r,
        )
        self.auth_failures = auth_failures_counter(r)
        self.limit_rejections = Counter(
            "splitfc_cloud_limit_rejections",
            "Requests refused by a limit: message_bytes, bitstream_bytes, elements, decode_time, "
            "streams_per_client, queue, upload_bytes, upload_idle, upload_bytes_per_client, upload_rate, "
            "upload_time, stream_write, answer_bytes.",
            ["limit"], registry=r,
        )
        for limit in LIMITS:
            self.limit_rejections.labels(limit)
        self.buffered_upload_bytes = Gauge(
            "splitfc_cloud_buffered_upload_bytes", "Bytes of chunked uploads held now (max_buffered_upload_bytes).",
            registry=r, multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "splitfc_cloud_ready", "1 once every model is loaded.", registry=r, multiprocess_mode="livemin",
        )
        self.model_load_seconds = Gauge(
            "splitfc_cloud_model_load_seconds", "Time spent loading each model at start-up.", ["split"], registry=r,
            multiprocess_mode="livemax",
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in this registry."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent), e.g. ``value("splitfc_cloud_requests_total", {...})``."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
