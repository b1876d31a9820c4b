"""The gRPC servicer: validate, decode, run ``tail``, answer; bounded, timed, counted, logged.

One request: (receive) -> size check -> admission (a free worker, else wait in a
queue of ``max_queue``, else RESOURCE_EXHAUSTED) -> in a worker thread: parse,
validate (version, split, codec, declared shape against the split and the loaded
model, element limit, CRC) and decode the bitstream, then ``tail`` -> response.
CPU work runs in a thread pool of ``max_concurrency`` workers, off the event
loop. A worker slot is released only when its thread finishes, even if the
caller gave up (deadline, cancel): the CPU bound holds.

``Infer`` is served as a stream-unary handler (the wire is the same as unary): a
request over the gRPC message limit then reaches the handler as an empty stream,
so it is counted in the metrics instead of vanishing inside gRPC core.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import prod
from typing import Any

import grpc

from splitfc import __version__
from splitfc.cloud.errors import RequestFailed
from splitfc.cloud.metrics import CloudMetrics, codec_label, split_label
from splitfc.cloud.settings import CloudSettings
from splitfc.common.bitstream import (
    FORMAT_VERSION,
    bitstream_stats,
    decode_features,
    parse_bitstream,
)
from splitfc.common.codecs import CODECS
from splitfc.common.errors import ShapeError, SplitfcError
from splitfc.common.models.base import SplitModel
from splitfc.common.specs import SPLITS
from splitfc.common.wire import task_result_to_proto
from splitfc.v1 import bitstream_pb2 as bpb
from splitfc.v1 import service_pb2 as svc

SERVICE_NAME = "splitfc.v1.SplitInference"
ModelLoader = Callable[[str, str], SplitModel]

# A cancellation this close to the deadline is counted as DEADLINE_EXCEEDED (see run_one).
DEADLINE_SLACK_S = 0.5


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


def default_model_loader(split_id: str, preset: str) -> SplitModel:
    """``splitfc.common.models.get_split_model`` (imported when first needed)."""
    from splitfc.common.models import get_split_model

    return get_split_model(split_id, preset=preset)


class SplitInferenceService:
    """Models, admission control and the request pipeline behind the gRPC methods."""

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
        s = self.settings
        splits = []
        for split_id in self.split_ids:
            spec = SPLITS[split_id]
            model = self.models.get(split_id)
            shape = [0 if d is None else int(d) for d in model.expected_shape()] if model is not None else []
            splits.append(svc.SplitInfo(
                split=split_id, family=spec.family, task=spec.task, feature_shape=shape,
                max_elements=self.max_elements(split_id), metric=spec.metric,
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
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request took over {seconds:.3g} s of worker time, over the limit of max_decode_seconds={limit:g}",
            limit="decode_time",
        )

    def _work(self, data: bytes | bpb.FeatureBitstream, rec: RequestRecord) -> tuple[svc.TaskResult, float, float]:
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
                        grpc.StatusCode.NOT_FOUND,
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
            raise self._decode_time_exceeded(t1 - t0)  # the event loop has answered already; skip the tail
        try:
            out = model.tail(features)
            result = task_result_to_proto(out)
        except Exception as exc:
            self.log.exception("tail failed", extra={"fields": {"request_id": rec.request_id}})
            raise RequestFailed(
                grpc.StatusCode.INTERNAL, f"tail of {split} failed: {type(exc).__name__}: {exc}"
            ) from None
        return result, t1 - t0, time.perf_counter() - t1

    # -- one request on the event loop --------------------------------------------------------
    async def process(
        self, request_id: str, data: bytes | bpb.FeatureBitstream, context: grpc.aio.ServicerContext,
        rec: RequestRecord, t_start: float,
    ) -> svc.InferResponse:
        """Admit, decode, run the tail; raise `RequestFailed` for any non-OK outcome."""
        if not self.ready:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "models are still loading; retry later")
        size = len(data) if isinstance(data, bytes) else data.ByteSize()
        if size > self.settings.max_bitstream_bytes:
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"bitstream of {size} bytes is over the limit of {self.settings.max_bitstream_bytes}",
                "oversized", limit="bitstream_bytes",
            )
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining <= 0:
            raise RequestFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before the request was admitted")
        assert self._slots is not None and self._loop is not None
        if self._slots.locked() and self._waiting >= self.settings.max_queue:
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
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
            cfut = self._executor.submit(self._work, data, rec)
        except RuntimeError:
            slots.release()
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "server is shutting down") from None
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
        stats = rec.stats
        total_s = time.perf_counter() - t_start
        rec.timings_ms = {
            "queue_ms": queue_s * 1e3, "decode_ms": decode_s * 1e3, "tail_ms": tail_s * 1e3, "total_ms": total_s * 1e3,
        }
        return svc.InferResponse(
            request_id=request_id,
            split=rec.split or "",
            result=result,
            timing=svc.ServerTiming(**rec.timings_ms),
            rate=svc.RateInfo(
                payload_bytes=stats["payload_bits"] // 8, bitstream_bytes=stats["total_bytes"],
                feature_points=stats["feature_points"], bpfp=stats["bpfp"],
            ),
        )

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

    async def run_one(
        self, method: str, request_id: str, data: bytes | bpb.FeatureBitstream | None,
        context: grpc.aio.ServicerContext, t_start: float, missing: RequestFailed | None = None,
    ) -> tuple[svc.InferResponse | None, RequestFailed | None]:
        """Process one request and account for it: (response, None) or (None, failure)."""
        rec = RequestRecord(request_id=request_id, method=method)
        self.metrics.inflight.inc()
        try:
            if data is None:
                raise missing or RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "request carries no bitstream")
            response = await self.process(request_id, data, context, rec, t_start)
            return response, None
        except RequestFailed as exc:
            rec.status, rec.message = exc.code.name, exc.message
            if exc.limit is not None:
                self.metrics.limit_rejections.labels(exc.limit).inc()
            if exc.reason is not None:
                self.metrics.decode_errors.labels(split_label(rec.split), codec_label(rec.codec), exc.reason).inc()
            return None, exc
        except asyncio.CancelledError:
            remaining = context.time_remaining() if context is not None else None
            # The client's own deadline fires first and cancels the call: the server's copy of the
            # deadline (taken when the request arrived) runs out a transit time later.
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            rec.status = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            rec.message = "deadline exceeded" if expired else "cancelled by the client"
            raise
        except Exception as exc:  # a bug: still an answer, and a log line with the traceback
            self.log.exception("request failed", extra={"fields": {"request_id": request_id}})
            rec.status, rec.message = "INTERNAL", f"{type(exc).__name__}: {exc}"
            return None, RequestFailed(grpc.StatusCode.INTERNAL, rec.message)
        finally:
            self.metrics.inflight.dec()
            self.finish(rec)


def _request_input(req: svc.InferRequest) -> bytes | bpb.FeatureBitstream | None:
    kind = req.WhichOneof("input")
    if kind == "bitstream":
        return req.bitstream
    if kind == "bitstream_message":
        return req.bitstream_message
    return None


class SplitInferenceServicer:
    """The ``splitfc.v1.SplitInference`` methods over a `SplitInferenceService`."""

    def __init__(self, service: SplitInferenceService) -> None:
        self.service = service

    async def Infer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> svc.InferResponse:
        t_start = time.perf_counter()
        req = await context.read()
        if req is grpc.aio.EOF:
            # gRPC core dropped the message (over max_message_bytes) or the client sent none.
            failure = RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message missing or over the limit of {self.service.settings.max_message_bytes} bytes",
                "oversized", limit="message_bytes",
            )
            await self.service.run_one("Infer", "", None, context, t_start, failure)
            await context.abort(failure.code, failure.message)
        request_id = req.request_id or uuid.uuid4().hex
        response, failure = await self.service.run_one("Infer", request_id, _request_input(req), context, t_start)
        if failure is not None:
            await context.abort(failure.code, failure.message)
        return response

    async def InferChunked(
        self, request_iterator: AsyncIterator[svc.BitstreamChunk], context: grpc.aio.ServicerContext
    ) -> svc.InferResponse:
        t_start = time.perf_counter()
        limit = self.service.settings.max_bitstream_bytes
        request_id = ""
        buf: bytearray | None = None
        total = 0
        failure: RequestFailed | None = None
        async for chunk in request_iterator:
            if buf is None:
                request_id = chunk.request_id or uuid.uuid4().hex
                total = chunk.total_bytes
                if total > limit:
                    failure = RequestFailed(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"announced bitstream of {total} bytes is over the limit of {limit}", "oversized",
                        limit="bitstream_bytes",
                    )
                    break
                buf = bytearray()
            if len(buf) + len(chunk.data) > total:
                failure = RequestFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"chunks carry more than the announced {total} bytes", "chunking",
                )
                break
            buf += chunk.data
        if failure is None and (buf is None or len(buf) != total):
            got = 0 if buf is None else len(buf)
            failure = RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk stream ended after {got} of {total} announced bytes "
                f"(or a chunk was over the {self.service.settings.max_message_bytes}-byte message limit)",
                "chunking",
            )
        data = None if failure is not None or buf is None else bytes(buf)
        response, failure = await self.service.run_one("InferChunked", request_id, data, context, t_start, failure)
        if failure is not None:
            await context.abort(failure.code, failure.message)
        return response

    async def InferStream(
        self, request_iterator: AsyncIterator[svc.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.InferResponse]:
        out: asyncio.Queue[svc.InferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(req: svc.InferRequest, t_start: float) -> None:
            request_id = req.request_id or uuid.uuid4().hex
            response, failure = await self.service.run_one(
                "InferStream", request_id, _request_input(req), context, t_start
            )
            if failure is not None:
                response = svc.InferResponse(
                    request_id=request_id,
                    error=svc.Error(code=failure.code.value[0], code_name=failure.code.name, message=failure.message),
                )
            await out.put(response)

        async def reader() -> None:
            async for req in request_iterator:
                task = asyncio.create_task(one(req, time.perf_counter()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await out.put(None)

        read_task = asyncio.create_task(reader())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
            await read_task
        finally:
            if not read_task.done():
                read_task.cancel()
            for task in list(tasks):
                task.cancel()

    async def GetInfo(self, request: svc.GetInfoRequest, context: grpc.aio.ServicerContext) -> svc.ServerInfo:
        return self.service.info()


def add_servicer(servicer: SplitInferenceServicer, server: grpc.aio.Server) -> None:
    """Register the service (``Infer`` as stream-unary on this side, see the module doc)."""
    handlers = {
        "Infer": grpc.stream_unary_rpc_method_handler(
            servicer.Infer,
            request_deserializer=svc.InferRequest.FromString,
            response_serializer=svc.InferResponse.SerializeToString,
        ),
        "InferChunked": grpc.stream_unary_rpc_method_handler(
            servicer.InferChunked,
            request_deserializer=svc.BitstreamChunk.FromString,
            response_serializer=svc.InferResponse.SerializeToString,
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream,
            request_deserializer=svc.InferRequest.FromString,
            response_serializer=svc.InferResponse.SerializeToString,
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo,
            request_deserializer=svc.GetInfoRequest.FromString,
            response_serializer=svc.ServerInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
