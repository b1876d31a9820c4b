"""The inference engine: admission, decode, tail, metrics and logs; it knows nothing of the transport.

One request: size check -> admission (a free worker, else wait in a queue of
``max_queue``, else RESOURCE_EXHAUSTED) -> in a worker thread: parse, validate
(version, split, codec, declared shape against the split and the loaded model,
element limit, CRC) and decode the bitstream, then ``tail`` -> a `TaskResult`.
CPU work runs in a thread pool of ``max_concurrency`` workers, off the event
loop. A worker slot is released only when its thread finishes, even if the
caller gave up (deadline, cancel): the CPU bound holds.

Errors come in typed (`splitfc.common.errors`) and go out as `RequestFailed`
with a transport-free `Status`; the entrypoints (``cloud/servicer.py`` for gRPC,
``cloud/http.py``) translate. As vLLM separates its engine from its entrypoints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import prod
from typing import Any

from splitfc import __version__
from splitfc.cloud.errors import RequestFailed, Status
from splitfc.cloud.metrics import CloudMetrics, codec_label, split_label
from splitfc.cloud.settings import CloudSettings
from splitfc.common.bitstream import FORMAT_VERSION, bitstream_stats, decode_features, parse_bitstream
from splitfc.common.codecs import CODECS
from splitfc.common.errors import ShapeError, SplitfcError
from splitfc.common.models.base import SplitModel
from splitfc.common.specs import SPLITS
from splitfc.common.tasks import get_task
from splitfc.common.wire import task_result_to_proto
from splitfc.v1 import bitstream_pb2 as bpb
from splitfc.v1 import service_pb2 as svc

ModelLoader = Callable[[str, str], SplitModel]
Bitstream = bytes | bpb.FeatureBitstream

DEADLINE_SLACK_S = 0.5
"""A cancellation this close to the deadline is counted as DEADLINE_EXCEEDED (see `InferenceEngine.run`)."""


@dataclass
class RequestRecord:
    """What one request logs and counts."""

    request_id: str
    method: str
    split: str | None = None
    codec: str | None = None
    qp: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    status: str = "OK"
    message: str = ""


@dataclass(frozen=True)
class InferOutcome:
    """A successful request: the task result and what the response reports beside it."""

    request_id: str
    split: str
    result: svc.TaskResult
    timings_ms: dict[str, float]
    """``queue_ms``, ``decode_ms``, ``tail_ms``, ``total_ms`` (server side)."""
    stats: dict[str, Any]
    """`BitstreamStats.as_dict()` of the request's bitstream."""


def default_model_loader(split_id: str, preset: str) -> SplitModel:
    """``splitfc.common.models.get_split_model`` (imported when first needed)."""
    from splitfc.common.models import get_split_model

    return get_split_model(split_id, preset=preset)


class InferenceEngine:
    """Models, admission control and the request pipeline behind every entrypoint."""

    def __init__(
        self,
        settings: CloudSettings,
        metrics: CloudMetrics,
        logger: logging.Logger,
        model_loader: ModelLoader = default_model_loader,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.log = logger
        self.model_loader = model_loader
        self.split_ids = settings.split_ids()
        self.models: dict[str, SplitModel] = {}
        self.ready = False
        self.load_error: str | None = None
        self.codec_status = {name: cls.unavailable_reason() for name, cls in CODECS.items()}
        self._executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="splitfc-worker")
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start-up ---------------------------------------------------------------------------
    def load_models(self) -> None:
        """Load every served model (blocking; run it in a thread). Sets ``ready``."""
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        for split_id in self.split_ids:
            t0 = time.perf_counter()
            self.models[split_id] = self.model_loader(split_id, self.settings.preset)
            self.metrics.model_load_seconds.labels(split_id).set(time.perf_counter() - t0)
        self.ready = True
        self.metrics.ready.set(1)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots = asyncio.Semaphore(self.settings.max_concurrency)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- info -----------------------------------------------------------------------------
    def max_elements(self, split_id: str) -> int:
        limit = self.settings.max_elements_for(split_id)
        model = self.models.get(split_id)
        if model is not None:
            shape = model.expected_shape()
            if all(s is not None for s in shape):
                limit = min(limit, prod(int(s) for s in shape))  # type: ignore[arg-type]
        return limit

    def info(self) -> svc.ServerInfo:
        """Models, splits, codecs and limits (the ``GetInfo`` answer, served as JSON over HTTP too)."""
        s = self.settings
        splits = []
        for split_id in self.split_ids:
            spec = SPLITS[split_id]
            model = self.models.get(split_id)
            shape = [0 if d is None else int(d) for d in model.expected_shape()] if model is not None else []
            splits.append(svc.SplitInfo(
                split=split_id, family=spec.family, task=spec.task, feature_shape=shape,
                max_elements=self.max_elements(split_id), metric=get_task(spec.task).metric,
                model=(getattr(model, "model_name", "") or type(model).__name__) if model is not None else "",
            ))
        codecs = [
            svc.CodecInfo(
                name=name, available=self.codec_status[name] is None, reason=self.codec_status[name] or "",
                rate_name=cls.rate_name, rates=list(cls.rates),
            )
            for name, cls in CODECS.items()
        ]
        return svc.ServerInfo(
            version=__version__, preset=s.preset, ready=self.ready, splits=splits, codecs=codecs,
            limits=svc.Limits(
                max_message_bytes=s.max_message_bytes, max_bitstream_bytes=s.max_bitstream_bytes,
                max_concurrency=s.max_concurrency, max_queue=s.max_queue,
            ),
            bitstream_format_version=FORMAT_VERSION,
        )

    # -- the work (runs in a worker thread) --------------------------------------------------
    def _check_shape(self, split: str, shape: tuple[int, ...]) -> None:
        """Raise `ShapeError` unless ``shape`` fits the split's layout and the served model."""
        SPLITS[split].check_shape(shape)
        expected = self.models[split].expected_shape()
        fits = len(shape) == len(expected) and all(e is None or e == d for e, d in zip(expected, shape, strict=True))
        if not fits:
            exp = "x".join("N" if e is None else str(e) for e in expected)
            raise ShapeError(
                f"declared shape {'x'.join(map(str, shape))} does not fit split {split} "
                f"as served ({self.settings.preset} preset expects {exp})"
            )

    def _decode_time_exceeded(self, seconds: float) -> RequestFailed:
        limit = self.settings.max_decode_seconds
        return RequestFailed(
            Status.RESOURCE_EXHAUSTED,
            f"request took over {seconds:.3g} s of worker time, over the limit of max_decode_seconds={limit:g}",
            limit="decode_time",
        )

    def work(self, data: Bitstream, rec: RequestRecord) -> tuple[svc.TaskResult, float, float]:
        """One request's CPU work, blocking: parse, validate, decode, tail -> (result, decode s, tail s).

        Raises `RequestFailed`. Entrypoints call `run`; benchmarks call this to measure the work alone.
        """
        t0 = time.perf_counter()
        try:
            msg = parse_bitstream(data) if isinstance(data, bytes) else data
            rec.split, rec.codec, rec.qp = msg.split or None, msg.codec.codec or None, msg.codec.rate
            split = msg.split
            if msg.format_version == FORMAT_VERSION and split in SPLITS:
                # Cheap checks against the loaded model first; decode_features then validates the
                # rest (codec, element limit, CRC, pre-processing header) once, before allocating.
                if split not in self.models:
                    raise RequestFailed(
                        Status.NOT_FOUND,
                        f"split {split} is not served here (serving: {', '.join(self.split_ids)})",
                        "split_not_served",
                    )
                if len(msg.tensors) == 1:
                    self._check_shape(split, tuple(int(d) for d in msg.tensors[0].shape))
            features = decode_features(msg, self.max_elements(split) if split in SPLITS else None)
            model = self.models[split]
            rec.stats = bitstream_stats(msg).as_dict()
        except RequestFailed:
            raise
        except SplitfcError as exc:
            raise RequestFailed.from_error(exc) from None
        t1 = time.perf_counter()
        limit = self.settings.max_decode_seconds
        if limit > 0 and t1 - t0 > limit:
            raise self._decode_time_exceeded(t1 - t0)  # the caller has its answer already; skip the tail
        try:
            out = model.tail(features)
            result = task_result_to_proto(out)
        except Exception as exc:
            self.log.exception("tail failed", extra={"fields": {"request_id": rec.request_id}})
            raise RequestFailed(Status.INTERNAL, f"tail of {split} failed: {type(exc).__name__}: {exc}") from None
        return result, t1 - t0, time.perf_counter() - t1

    # -- one request on the event loop --------------------------------------------------------
    async def _admit_and_work(
        self, data: Bitstream, rec: RequestRecord, t_start: float, deadline: float | None,
    ) -> InferOutcome:
        """Admit, decode, run the tail; raise `RequestFailed` for any non-OK outcome."""
        if not self.ready:
            raise RequestFailed(Status.UNAVAILABLE, "models are still loading; retry later")
        size = len(data) if isinstance(data, bytes) else data.ByteSize()
        if size > self.settings.max_bitstream_bytes:
            raise RequestFailed(
                Status.RESOURCE_EXHAUSTED,
                f"bitstream of {size} bytes is over the limit of {self.settings.max_bitstream_bytes}",
                "oversized", limit="bitstream_bytes",
            )
        if deadline is not None and deadline <= time.monotonic():
            raise RequestFailed(Status.DEADLINE_EXCEEDED, "deadline expired before the request was admitted")
        assert self._slots is not None and self._loop is not None
        if self._slots.locked() and self._waiting >= self.settings.max_queue:
            raise RequestFailed(
                Status.RESOURCE_EXHAUSTED,
                f"server busy: {self.settings.max_concurrency} requests running and "
                f"{self._waiting} waiting (max_queue {self.settings.max_queue}); retry later",
                limit="queue",
            )
        t_queue = time.perf_counter()
        self._waiting += 1
        self.metrics.queued.inc()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self.metrics.queued.dec()
        queue_s = time.perf_counter() - t_queue
        loop = self._loop
        slots = self._slots
        try:
            cfut = self._executor.submit(self.work, data, rec)
        except RuntimeError:
            slots.release()
            raise RequestFailed(Status.UNAVAILABLE, "server is shutting down") from None
        cfut.add_done_callback(lambda _f: loop.call_soon_threadsafe(slots.release))
        work = asyncio.wrap_future(cfut)
        limit = self.settings.max_decode_seconds
        if limit > 0:
            # A thread cannot be killed: past the limit the caller gets its answer now, the worker
            # slot stays taken until the thread returns (the CPU bound holds), its result is dropped.
            work.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                result, decode_s, tail_s = await asyncio.wait_for(asyncio.shield(work), limit)
            except TimeoutError:
                raise self._decode_time_exceeded(time.perf_counter() - t_queue - queue_s) from None
        else:
            result, decode_s, tail_s = await work
        total_s = time.perf_counter() - t_start
        rec.timings_ms = {
            "queue_ms": queue_s * 1e3, "decode_ms": decode_s * 1e3, "tail_ms": tail_s * 1e3, "total_ms": total_s * 1e3,
        }
        return InferOutcome(rec.request_id, rec.split or "", result, rec.timings_ms, rec.stats)

    def finish(self, rec: RequestRecord) -> None:
        """Count and log one finished request (any status)."""
        split, codec = split_label(rec.split), codec_label(rec.codec)
        m = self.metrics
        m.requests.labels(split, codec, rec.status).inc()
        if rec.status == "OK":
            for stage in ("queue", "decode", "tail", "total"):
                m.stage_seconds.labels(split, stage).observe(rec.timings_ms[f"{stage}_ms"] / 1e3)
            m.bitstream_bytes.labels(split, codec).observe(rec.stats["total_bytes"])
            m.payload_bytes.labels(split, codec).inc(rec.stats["payload_bits"] // 8)
            m.bpfp.labels(split, codec).observe(rec.stats["bpfp"])
        if self.log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "side": "cloud", "event": "request", "request_id": rec.request_id, "method": rec.method,
                "split": rec.split, "codec": rec.codec, "qp": rec.qp, "status": rec.status,
            }
            if rec.stats:
                fields.update(
                    bpfp=rec.stats["bpfp"], payload_bytes=rec.stats["payload_bits"] // 8,
                    bitstream_bytes=rec.stats["total_bytes"], feature_points=rec.stats["feature_points"],
                )
            fields.update({k: round(v, 3) for k, v in rec.timings_ms.items()})
            if rec.message:
                fields["error"] = rec.message
            self.log.info("", extra={"fields": fields})

    async def run(
        self, method: str, request_id: str, data: Bitstream | None, t_start: float,
        deadline: float | None = None, failure: RequestFailed | None = None,
    ) -> tuple[InferOutcome | None, RequestFailed | None]:
        """Process one request and account for it: (outcome, None) or (None, failure).

        ``deadline`` is the caller's deadline on ``time.monotonic()``'s clock (None: none);
        ``failure`` is an error the entrypoint found before (the request is counted with it).
        """
        rec = RequestRecord(request_id=request_id, method=method)
        self.metrics.inflight.inc()
        try:
            if data is None:
                raise failure or RequestFailed(Status.INVALID_ARGUMENT, "request carries no bitstream")
            return await self._admit_and_work(data, rec, t_start, deadline), None
        except RequestFailed as exc:
            rec.status, rec.message = exc.status.name, exc.message
            if exc.limit is not None:
                self.metrics.limit_rejections.labels(exc.limit).inc()
            if exc.reason is not None:
                self.metrics.decode_errors.labels(split_label(rec.split), codec_label(rec.codec), exc.reason).inc()
            return None, exc
        except asyncio.CancelledError:
            # The client's own deadline fires first and cancels the call: the server's copy of the
            # deadline (taken when the request arrived) runs out a transit time later.
            expired = deadline is not None and deadline - time.monotonic() <= DEADLINE_SLACK_S
            rec.status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            rec.message = "deadline exceeded" if expired else "cancelled by the client"
            raise
        except Exception as exc:  # a bug: still an answer, and a log line with the traceback
            self.log.exception("request failed", extra={"fields": {"request_id": request_id}})
            rec.status, rec.message = "INTERNAL", f"{type(exc).__name__}: {exc}"
            return None, RequestFailed(Status.INTERNAL, rec.message)
        finally:
            self.metrics.inflight.dec()
            self.finish(rec)
