"""Load test of the splitfc cloud: a gRPC user replaying pre-encoded bitstreams of each split.

Follows locust's documented gRPC pattern: gevent-compatible gRPC
(``grpc.experimental.gevent.init_gevent()`` before any channel), one channel
per user, and a client interceptor that reports every call to locust as a
request event (so RPS, percentiles and failures land in locust's stats and
CSV files). Run through ``make loadtest`` (deploy/loadtest.sh), or::

    locust -f deploy/locust/locustfile.py --headless -u 32 -r 8 -t 60s \\
        --host 127.0.0.1:50051 --csv results/loadtest/locust

Bitstreams are made once per process before the run (locust's init event): each split's tiny model
head on a built-in sample, coded with ``SPLITFC_LOADTEST_CODEC`` at
``SPLITFC_LOADTEST_QP``; requests are then pure replay (the edge-side CPU cost
is not part of the load). Settings: env ``SPLITFC_LOADTEST_*`` (below).

At the end of the run it prints (and writes to ``SPLITFC_LOADTEST_SUMMARY``, JSON) what
``splitfc bench-serving`` reports: per split and in all, throughput, p50/p99 latency and, with
``SPLITFC_LOADTEST_METRICS_URL`` (the cloud's ``/metrics``; ``make loadtest`` sets it for the cloud it
starts), the tail batch sizes the cloud ran during the run (`loadtest_summary`).
"""

from __future__ import annotations

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists

import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
from loadtest_summary import format_summary, read_batches, summarize  # noqa: E402  (next to this file)
from locust import User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import LocustError  # noqa: E402
from pydantic_settings import BaseSettings, SettingsConfigDict  # noqa: E402

from splitfc.v1 import service_pb2 as svc  # noqa: E402
from splitfc.v1 import service_pb2_grpc as svc_grpc  # noqa: E402

log = logging.getLogger("splitfc.loadtest")
SPLIT_HEADER = "x-splitfc-split"
"""Request metadata naming the split, so locust's stats have one row per split."""


class LoadtestSettings(BaseSettings):
    """What the locust users send; env ``SPLITFC_LOADTEST_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SPLITFC_LOADTEST_", extra="ignore")

    splits: str = "all"
    """Splits to replay ("all": every split the server reports via GetInfo)."""
    codec: str = "vvenc"
    qp: int = 32
    preset: str = "tiny"
    samples_per_split: int = 2
    """Distinct bitstreams per split (different built-in samples)."""
    timeout_s: float = 60.0
    """gRPC deadline of one call."""
    max_message_bytes: int = 64 << 20
    metrics_url: str = ""
    """The cloud's Prometheus endpoint (``http://HOST:PORT/metrics``), read before and after the run
    for the tail batch sizes it ran; empty: not read."""
    summary: str = ""
    """Where to write the run's summary as JSON (empty: printed only)."""


SETTINGS = LoadtestSettings()
BITSTREAMS: dict[str, list[bytes]] = {}
"""split id -> serialized FeatureBitstreams, filled once at test start."""
INFER = "/splitfc.v1.SplitInference/Infer"
_BATCHES_BEFORE: dict[str, dict[int, float]] = {}


def encode_bitstreams(splits: list[str], settings: LoadtestSettings) -> dict[str, list[bytes]]:
    """Each split's head on built-in samples, coded as the edge would code it (`head_bitstreams`)."""
    from splitfc.common.samples import head_bitstreams

    out: dict[str, list[bytes]] = {}
    for split in splits:
        out[split] = head_bitstreams(split, settings.preset, settings.codec, settings.qp, settings.samples_per_split)
        log.info("loadtest: %s: %d bitstreams, %s bytes", split, len(out[split]), [len(b) for b in out[split]])
    return out


def _served_splits(host: str) -> list[str]:
    with grpc.insecure_channel(host) as channel:
        info = svc_grpc.SplitInferenceStub(channel).GetInfo(svc.GetInfoRequest(), timeout=120, wait_for_ready=True)
    return [s.split for s in info.splits]


@events.init.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    """Before the run starts (and its run-time clock with it): make the bitstreams."""
    if BITSTREAMS or not environment.host:
        return
    host = environment.host
    if SETTINGS.splits.strip() in ("", "all"):
        splits = _served_splits(host)
    else:
        splits = [s.strip() for s in SETTINGS.splits.split(",") if s.strip()]
    BITSTREAMS.update(encode_bitstreams(splits, SETTINGS))


def _read_batches() -> dict[str, dict[int, float]] | None:
    if not SETTINGS.metrics_url:
        return None
    try:
        return read_batches(SETTINGS.metrics_url, sorted(BITSTREAMS))
    except OSError as exc:
        log.warning("loadtest: could not read the cloud's metrics at %s: %s", SETTINGS.metrics_url, exc)
        return None


@events.test_start.add_listener
def _batches_before(environment: Environment, **_: Any) -> None:
    """The cloud's tail batch counts before the first request."""
    _BATCHES_BEFORE.clear()
    _BATCHES_BEFORE.update(_read_batches() or {})


@events.test_stop.add_listener
def _report(environment: Environment, **_: Any) -> None:
    """After the last answer: throughput, p50/p99 and the batch sizes the cloud ran, printed (and JSON)."""
    after = _read_batches()
    before = _BATCHES_BEFORE if SETTINGS.metrics_url and after is not None else None
    summary = summarize(environment.stats, {f"{INFER} {split}": split for split in BITSTREAMS}, before, after)
    print("loadtest summary:\n" + format_summary(summary), flush=True)
    if SETTINGS.summary:
        with open(SETTINGS.summary, "w") as f:
            json.dump(summary, f, indent=2)


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Reports every unary call to locust: name = method (+ split), failure = non-OK status."""

    def __init__(self, environment: Environment) -> None:
        self.env = environment

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        start = time.perf_counter()
        call = continuation(client_call_details, request)
        exception = call.exception()  # blocks (cooperatively under gevent) until the call ends
        length = 0 if exception is not None else call.result().ByteSize()
        name = client_call_details.method
        split = dict(client_call_details.metadata or ()).get(SPLIT_HEADER)
        self.env.events.request.fire(
            request_type="grpc", name=f"{name} {split}" if split else name,
            response_time=(time.perf_counter() - start) * 1e3, response_length=length,
            response=None if exception is not None else call.result(), context=None, exception=exception,
        )
        return call


class GrpcUser(User):
    """A locust user with one gRPC channel (host = HOST:PORT of the cloud or the balancer)."""

    abstract = True
    stub_class: Any = None

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("set the gRPC target with --host HOST:PORT")
        options = [
            ("grpc.max_send_message_length", SETTINGS.max_message_bytes),
            ("grpc.max_receive_message_length", SETTINGS.max_message_bytes),
            ("grpc.enable_retries", 0),
        ]
        channel = grpc.insecure_channel(self.host, options=options)
        self._channel = grpc.intercept_channel(channel, LocustInterceptor(environment))
        self.stub = self.stub_class(self._channel)

    def on_stop(self) -> None:
        self._channel.close()


class SplitInferenceUser(GrpcUser):
    """Sends Infer requests back to back, cycling through the splits' pre-encoded bitstreams."""

    stub_class = svc_grpc.SplitInferenceStub

    def on_start(self) -> None:
        pool = [(split, b) for split, bs in sorted(BITSTREAMS.items()) for b in bs]
        if not pool:
            raise LocustError("no bitstreams prepared (is the server reachable?)")
        self._next = itertools.cycle(pool)

    @task
    def infer(self) -> None:
        split, data = next(self._next)
        # A failure is already reported to locust by the interceptor.
        with contextlib.suppress(grpc.RpcError):
            self.stub.Infer(svc.InferRequest(request_id=uuid.uuid4().hex, bitstream=data),
                            timeout=SETTINGS.timeout_s, metadata=((SPLIT_HEADER, split),))
