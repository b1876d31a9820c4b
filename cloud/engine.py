"""The inference engine: admission, decode, tail, metrics and logs; it knows nothing of the transport.

One request: size check -> admission (a free worker, else wait in a queue of
``max_queue``, else RESOURCE_EXHAUSTED) -> in a worker thread: parse, validate
(version, split, codec, declared shape against the split and the loaded model,
element limit, CRC) and decode the bitstream, then ``tail`` -> a `TaskResult`.
CPU work runs in a thread pool of ``max_concurrency`` workers, off the event
loop. A worker slot is released only when its thread finishes, even if the
caller gave up (deadline, cancel): the CPU bound holds.

Workers go to clients fairly (`splitfc.cloud.admission`); work stops for a caller that is gone (the
queue, external decoders, the tail); a request's bytes live in one `Payload` emptied when it ends and
failures carry no traceback, so a failed request's memory is freed without the garbage collector.

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
from math import prod
from typing import Any

import numpy as np

from splitfc.cloud import request as req
from splitfc.cloud.admission import ByteBudget, FairSlots
from splitfc.cloud.batching import TailBatcher, TailRequest, batch_counter, resolve
from splitfc.cloud.errors import RequestFailed, Status
from splitfc.cloud.metrics import CloudMetrics, codec_label, split_label
from splitfc.cloud.request import Bitstream, InferOutcome, Payload, RequestRecord, WorkStop, request_id_problem
from splitfc.cloud.settings import CloudSettings
from splitfc.common.bitstream import FORMAT_VERSION, bitstream_stats, decode_features, parse_bitstream
from splitfc.common.codecs import CODECS, stop_when
from splitfc.common.errors import ShapeError, SplitfcError, TooManyElementsError
from splitfc.common.models.base import SplitModel
from splitfc.common.specs import SPLITS
from splitfc.common.transport import MAX_REQUEST_ID_CHARS
from splitfc.common.untrusted import clip
from splitfc.common.wire import task_result_to_proto
from splitfc.v1 import bitstream_pb2 as svc_bitstream
from splitfc.v1 import service_pb2 as svc

ModelLoader = Callable[[str, str], SplitModel]

DEADLINE_SLACK_S = 0.5
"""A cancellation this close to the deadline is counted as DEADLINE_EXCEEDED (see `InferenceEngine.run`)."""


def default_model_loader(split_id: str, preset: str) -> SplitModel:
    """``splitfc.common.models.get_split_model`` (imported when first needed)."""
    from splitfc.common.models import get_split_model

    return get_split_model(split_id, preset=preset)


def served_max_tokens(model: SplitModel) -> int | None:
    """Longest sequence a served model takes (its ``max_position_embeddings``), if it has one.

    Looks through wrappers that keep the real model as ``inner`` (test doubles)."""
    seen = 0
    current: Any = model
    while current is not None and seen < 4:
        config = getattr(getattr(current, "model", None), "config", None)
        n = getattr(config, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
        current, seen = getattr(current, "inner", None), seen + 1
    return None


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
        self._slots: FairSlots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batcher: TailBatcher | None = None
        """Dynamic batching of the tail (`splitfc.cloud.batching`): on when ``max_batch_size`` > 1."""
        self._batches = batch_counter(metrics.registry)
        self._children: dict[tuple[str, str], Any] = {}
        """Per (split, codec) label values (closed sets: `split_label`, `codec_label`), the metric children
        `finish` updates."""
        self.upload_budget = ByteBudget(
            settings.max_buffered_upload_bytes, metrics.buffered_upload_bytes.set, settings.upload_bytes_per_client(),
        )
        """Bytes of chunked uploads held now (``max_buffered_upload_bytes``); the entrypoints charge it."""

    # -- start-up ---------------------------------------------------------------------------
    def load_models(self) -> None:
        """Load every served model (blocking; run it in a thread). Sets ``ready``."""
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        for split_id in self.split_ids:
            t0 = time.perf_counter()
            self.models[split_id] = self.model_loader(split_id, self.settings.preset)
            self.metrics.model_load_seconds.labels(split_id).set(time.perf_counter() - t0)
        if self.settings.check_answer_sizes:  # refuse a message limit that cannot hold a served split's answer
            req.check_answers_fit(self.models, self.settings.max_message_bytes)
        self.ready = True
        self.metrics.ready.set(1)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots = FairSlots(self.settings.max_concurrency, self.settings.max_queue, self.metrics.queued.set)
        if self.settings.max_batch_size > 1:
            self.batcher = TailBatcher(
                self._executor, self._slots, self.settings.max_batch_size, self.settings.max_batch_delay_ms / 1e3,
                self._batches, self.log, self.settings.inline_tail_max_ms / 1e3,
            )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- info -----------------------------------------------------------------------------
    def max_tokens(self, split_id: str) -> int | None:
        """Longest token count the served model of a variable-length split takes (None: not such a split)."""
        model = self.models.get(split_id)
        if model is None or None not in model.expected_shape():
            return None
        return served_max_tokens(model)

    def max_elements(self, split_id: str) -> int:
        limit = self.settings.max_elements_for(split_id)
        model = self.models.get(split_id)
        if model is not None:
            shape = model.expected_shape()
            tokens = self.max_tokens(split_id)
            if tokens is not None:
                shape = tuple(tokens if s is None else s for s in shape)
            if all(s is not None for s in shape):
                limit = min(limit, prod(int(s) for s in shape))  # type: ignore[arg-type]
        return limit

    def info(self) -> svc.ServerInfo:
        """Models, splits, codecs and limits (the ``GetInfo`` answer, served as JSON over HTTP too)."""
        from splitfc.cloud.info import server_info

        return server_info(self)

    # -- the work (runs in a worker thread) --------------------------------------------------
    def _check_shape(self, split: str, shape: tuple[int, ...]) -> None:
        """Raise `ShapeError` unless ``shape`` fits the split's layout and the served model (and
        `TooManyElementsError` past the served model's longest sequence)."""
        SPLITS[split].check_shape(shape)
        expected = self.models[split].expected_shape()
        fits = len(shape) == len(expected) and all(e is None or e == d for e, d in zip(expected, shape, strict=True))
        if not fits:
            exp = "x".join("N" if e is None else str(e) for e in expected)
            raise ShapeError(
                f"declared shape {'x'.join(map(str, shape))} does not fit split {split} "
                f"as served ({self.settings.preset} preset expects {exp})"
            )
        tokens = self.max_tokens(split)
        if tokens is not None:
            declared = max(d for d, e in zip(shape, expected, strict=True) if e is None)
            if declared > tokens:
                raise TooManyElementsError(
                    f"declared shape {'x'.join(map(str, shape))} has {declared} tokens, over the limit of {tokens} "
                    f"(the served model's max_position_embeddings)"
                )

    def _decode_time_exceeded(self, seconds: float) -> RequestFailed:
        limit = self.settings.max_decode_seconds
        return RequestFailed(
            Status.RESOURCE_EXHAUSTED,
            f"request took over {seconds:.3g} s of worker time, over the limit of max_decode_seconds={limit:g}",
            limit="decode_time",
        )

    def decode(
        self, data: Bitstream, rec: RequestRecord, stop: WorkStop | None = None,
    ) -> tuple[str, SplitModel, np.ndarray, float]:
        """A request's work up to its tail, blocking: parse, validate, decode -> (split, model, features,
        decode s). Raises `RequestFailed`, also when ``stop`` fired or ``max_decode_seconds`` passed
        (then no tail is to run)."""
        stop = stop or WorkStop(None)
        if stop.reason() is not None:
            raise stop.failure("before the work started; not started")
        t0 = time.perf_counter()
        try:
            msg = parse_bitstream(data) if isinstance(data, bytes) else data
            del data
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
            with stop_when(stop.reason):
                features = decode_features(msg, self.max_elements(split) if split in SPLITS else None)
            model = self.models[split]
            rec.stats = bitstream_stats(msg).as_dict()
            del msg
        except RequestFailed:
            raise
        except SplitfcError as exc:
            if stop.reason() is not None:  # e.g. an external decoder killed because the caller left
                raise stop.failure("during decoding") from None
            raise RequestFailed.from_error(exc) from None
        t1 = time.perf_counter()
        limit = self.settings.max_decode_seconds
        if limit > 0 and t1 - t0 > limit:
            raise self._decode_time_exceeded(t1 - t0)  # the caller has its answer already; skip the tail
        if stop.reason() is not None:
            raise stop.failure("during decoding; tail skipped")
        return split, model, features, t1 - t0

    def work(
        self, data: Bitstream, rec: RequestRecord, stop: WorkStop | None = None,
    ) -> tuple[svc.TaskResult, float, float]:
        """One request's CPU work, blocking: parse, validate, decode, tail -> (result, decode s, tail s).

        ``stop`` says when the caller no longer waits: the work does not start, external decoders are
        killed, the tail is skipped. Raises `RequestFailed`. Entrypoints call `run`; benchmarks call this
        to measure the work alone (unbatched).
        """
        split, model, features, decode_s = self.decode(data, rec, stop)
        t1 = time.perf_counter()
        try:
            out = model.tail(features)
            result = task_result_to_proto(out)
        except Exception as exc:
            self.log.exception("tail failed", extra={"fields": {"request_id": rec.request_id}})
            raise RequestFailed(Status.INTERNAL, f"tail of {split} failed: {type(exc).__name__}: {exc}") from None
        return result, decode_s, time.perf_counter() - t1

    def _pool_outcome(self, step: Any, payload: Payload, rec: RequestRecord, stop: WorkStop) -> Any:
        """Run ``step(data, rec, stop)`` (`decode` or `work`) for the thread pool: a failure is returned
        `detached`, never raised through the futures (a raised exception would carry the work's frames,
        and with them the payload, into the event loop)."""
        data = payload.data
        if data is None:
            return RequestFailed(Status.CANCELLED, "request ended before its work started")
        try:
            return step(data, rec, stop)
        except RequestFailed as exc:
            return exc.detached()
        except Exception as exc:  # a bug: still an answer, and a log line with the traceback
            self.log.exception("request failed", extra={"fields": {"request_id": rec.request_id}})
            return RequestFailed(Status.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            del data

    INLINE_CODECS = frozenset({"raw"})
    """Codecs whose decode runs in this process in numpy alone (no external decoder, no model), at a cost
    proportional to the decoded bytes: the ones `_inline_decodable` lets run on the event loop."""

    def _inline_decodable(self, payload: Payload) -> svc_bitstream.FeatureBitstream | None:
        """The parsed bitstream of a request cheap enough to decode on the event loop, else None.

        Cheap: an `INLINE_CODECS` codec, one tensor, and at most ``inline_decode_max_bytes`` both on the
        wire and decoded (float32, from the declared shape): about 0.07 ms for tiny dinov2-cls (66 KB
        decoded), where a hop to a worker thread and back costs more than that on the event loop alone.
        Everything else (and anything that does not parse: the worker reports the error) goes to the
        pool. The request holds its worker slot meanwhile, as in the pool."""
        limit = self.settings.inline_decode_max_bytes
        data = payload.data
        if limit <= 0 or data is None:
            return None
        if isinstance(data, bytes):
            if len(data) > limit:
                return None
            try:
                data = parse_bitstream(data)
            except SplitfcError:
                return None
        if data.codec.codec not in self.INLINE_CODECS or len(data.tensors) != 1 or data.ByteSize() > limit:
            return None
        shape = data.tensors[0].shape
        if len(shape) > 8 or any(d < 0 for d in shape) or prod(int(d) for d in shape) * 4 > limit:
            return None
        return data

    def _decode_outcome(
        self, payload: Payload, rec: RequestRecord, stop: WorkStop,
    ) -> tuple[str, SplitModel, np.ndarray, float] | RequestFailed:
        """`decode` for the thread pool (batching), as `_pool_outcome`."""
        return self._pool_outcome(self.decode, payload, rec, stop)

    def _work_outcome(
        self, payload: Payload, rec: RequestRecord, stop: WorkStop,
    ) -> tuple[svc.TaskResult, float, float] | RequestFailed:
        """`work` (decode + tail) for the thread pool, as `_pool_outcome`."""
        return self._pool_outcome(self.work, payload, rec, stop)

    # -- one request on the event loop --------------------------------------------------------
    async def _admit_and_work(
        self, payload: Payload, rec: RequestRecord, t_start: float, stop: WorkStop,
    ) -> InferOutcome:
        """Admit, decode, run the tail; raise `RequestFailed` for any non-OK outcome."""
        if not self.ready:
            raise RequestFailed(Status.UNAVAILABLE, "models are still loading; retry later")
        data = payload.data
        size = len(data) if isinstance(data, bytes) else data.ByteSize()  # type: ignore[union-attr]
        del data
        if size > self.settings.max_bitstream_bytes:
            raise RequestFailed(
                Status.RESOURCE_EXHAUSTED,
                f"bitstream of {size} bytes is over the limit of {self.settings.max_bitstream_bytes}",
                "oversized", limit="bitstream_bytes",
            )
        if stop.reason() is not None:
            raise RequestFailed(Status.DEADLINE_EXCEEDED, "deadline expired before the request was admitted")
        slots, loop = self._slots, self._loop
        assert slots is not None and loop is not None
        t_queue = time.perf_counter()
        if not slots.try_acquire(rec.client):  # no free slot: wait in the queue, within the deadline
            try:
                async with asyncio.timeout(None if stop.deadline is None else stop.deadline - time.monotonic()):
                    await slots.acquire(rec.client)
            except TimeoutError:
                raise RequestFailed(Status.DEADLINE_EXCEEDED, "deadline expired while the request was queued; "
                                    "not started") from None
        queue_s = time.perf_counter() - t_queue
        if stop.reason() is not None:
            slots.release(rec.client)
            raise stop.failure("while the request was queued; not started")
        if self.batcher is not None:
            return await self._batched(payload, rec, t_start, stop, queue_s)
        client = rec.client
        try:
            cfut = self._executor.submit(self._work_outcome, payload, rec, stop)
        except RuntimeError:
            slots.release(client)
            raise RequestFailed(Status.UNAVAILABLE, "server is shutting down") from None
        cfut.add_done_callback(lambda _f: loop.call_soon_threadsafe(slots.release, client))
        work = asyncio.wrap_future(cfut)
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody may be waiting any more
        del cfut
        limit = self.settings.max_decode_seconds
        t_work = time.perf_counter()
        waits = [limit] if limit > 0 else []
        if stop.deadline is not None:
            waits.append(stop.deadline - time.monotonic())
        try:
            if waits:
                # A thread cannot be killed: past the limit or the deadline the caller gets its answer now,
                # the worker slot stays taken until the thread returns (the CPU bound holds); `stop` tells
                # the worker to skip what is left (external decoders, the tail) and its result is dropped.
                outcome = await asyncio.wait_for(asyncio.shield(work), max(0.0, min(waits)))
            else:
                outcome = await work
        except TimeoutError:
            if stop.reason() == "deadline exceeded":
                stop.abandoned = "deadline exceeded"
                raise RequestFailed(Status.DEADLINE_EXCEEDED, "deadline exceeded during decoding") from None
            stop.abandoned = "over max_decode_seconds"
            raise self._decode_time_exceeded(time.perf_counter() - t_work) from None
        except asyncio.CancelledError:
            stop.abandoned = "cancelled"
            raise
        if isinstance(outcome, RequestFailed):
            raise outcome
        result, decode_s, tail_s = outcome
        total_s = time.perf_counter() - t_start
        rec.timings_ms = {
            "queue_ms": queue_s * 1e3, "decode_ms": decode_s * 1e3, "tail_ms": tail_s * 1e3, "total_ms": total_s * 1e3,
        }
        return InferOutcome(rec.request_id, rec.split or "", result, rec.timings_ms, rec.stats)

    async def _batched(
        self, payload: Payload, rec: RequestRecord, t_start: float, stop: WorkStop, queue_s: float,
    ) -> InferOutcome:
        """An admitted request with batching on: decode in the pool (its slot is given back when the
        thread returns, even if the caller gave up), then its tail in a batch (`TailBatcher`).

        ``max_decode_seconds`` bounds the decode and the batch's tail, each from when it is handed to a
        thread; the deadline bounds every wait: a request whose deadline passes before its batch runs is
        answered DEADLINE_EXCEEDED and not run."""
        slots, loop, batcher = self._slots, self._loop, self.batcher
        assert slots is not None and loop is not None and batcher is not None
        client = rec.client
        decoded: asyncio.Future[None] = loop.create_future()
        tail_started: asyncio.Future[None] = loop.create_future()
        answer: asyncio.Future[Any] = loop.create_future()

        def after_decode(outcome: Any) -> None:  # event loop, whether or not the caller still waits
            slots.release(client)
            if outcome is None:  # the pool's future was cancelled
                outcome = RequestFailed(Status.UNAVAILABLE, "server is shutting down")
            if isinstance(outcome, RequestFailed) or stop.reason() is not None or answer.done():
                resolve(answer, outcome if isinstance(outcome, RequestFailed)
                        else stop.failure("during decoding; tail skipped"))
                resolve(decoded, None)
                resolve(tail_started, None)
                batcher.poke()
                return
            resolve(decoded, None)
            split, model, features, decode_s = outcome
            rec.timings_ms["decode_ms"] = decode_s * 1e3
            batcher.add((split, self.settings.preset), TailRequest(features, model, rec, stop, answer, tail_started))

        parsed = self._inline_decodable(payload)
        if parsed is not None:  # small, in-process codec: decoded here, no thread hop (see _inline_decodable)
            after_decode(self._pool_outcome(self.decode, Payload(parsed), rec, stop))
        else:
            try:
                cfut = self._executor.submit(self._decode_outcome, payload, rec, stop)
            except RuntimeError:
                slots.release(client)
                raise RequestFailed(Status.UNAVAILABLE, "server is shutting down") from None
            cfut.add_done_callback(lambda f: loop.call_soon_threadsafe(after_decode, f.result() if not f.cancelled()
                                                                       else None))
            del cfut
        del parsed
        limit = self.settings.max_decode_seconds
        # (what to wait for, whether max_decode_seconds runs meanwhile, where the request is)
        phases = ((decoded, True, "during decoding"), (tail_started, False, "while waiting for its batch; not run"),
                  (answer, True, "during the tail"))
        try:
            for fut, timed, where in phases:
                if answer.done():
                    break
                if fut.done():  # e.g. decoded on the loop: nothing to wait for
                    continue
                waits = [limit] if timed and limit > 0 else []
                if stop.deadline is not None:
                    waits.append(stop.deadline - time.monotonic())
                t_phase = time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.0, min(waits)) if waits else None):
                        await asyncio.shield(fut)
                except TimeoutError:
                    if stop.reason() == "deadline exceeded":
                        stop.abandoned = "deadline exceeded"
                        raise RequestFailed(Status.DEADLINE_EXCEEDED, f"deadline exceeded {where}") from None
                    stop.abandoned = "over max_decode_seconds"
                    raise self._decode_time_exceeded(time.perf_counter() - t_phase) from None
        except asyncio.CancelledError:
            stop.abandoned = "cancelled"
            raise
        outcome = answer.result()
        if isinstance(outcome, RequestFailed):
            raise outcome
        result, tail_s, _size = outcome
        rec.timings_ms.update(queue_ms=queue_s * 1e3, tail_ms=tail_s * 1e3,
                              total_ms=(time.perf_counter() - t_start) * 1e3)
        return InferOutcome(rec.request_id, rec.split or "", result, rec.timings_ms, rec.stats)

    def finish(self, rec: RequestRecord) -> None:
        """Count and log one finished request (any status)."""
        split, codec = split_label(rec.split), codec_label(rec.codec)
        m = self.metrics
        children = self._children.get((split, codec))
        if children is None:  # labels() costs a lock and a dict lookup each: resolved once per label set
            children = self._children[(split, codec)] = (
                [(f"{stage}_ms", m.stage_seconds.labels(split, stage))
                 for stage in ("queue", "decode", "tail", "total")],
                m.bitstream_bytes.labels(split, codec), m.payload_bytes.labels(split, codec),
                m.bpfp.labels(split, codec),
            )
        m.requests.labels(split, codec, rec.status).inc()
        if rec.status == "OK":
            stages, bitstream_bytes, payload_bytes, bpfp = children
            for name, child in stages:
                child.observe(rec.timings_ms[name] / 1e3)
            bitstream_bytes.observe(rec.stats["total_bytes"])
            payload_bytes.inc(rec.stats["payload_bits"] // 8)
            bpfp.observe(rec.stats["bpfp"])
        if self.log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "side": "cloud", "event": "request", "request_id": clip(rec.request_id, MAX_REQUEST_ID_CHARS),
                "method": rec.method, "split": None if rec.split is None else clip(rec.split),
                "codec": None if rec.codec is None else clip(rec.codec), "qp": rec.qp, "status": rec.status,
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

    def cancelled(self, deadline: float | None, what: str = "") -> RequestFailed:
        """The failure a request gone with its call is counted as: DEADLINE_EXCEEDED when its deadline is
        (about) up, else CANCELLED. The client's own deadline fires first and cancels the call; the server's
        copy of the deadline (taken when the request arrived) runs out a transit time later."""
        expired = deadline is not None and deadline - time.monotonic() <= DEADLINE_SLACK_S
        if expired:
            return RequestFailed(Status.DEADLINE_EXCEEDED, f"deadline exceeded{what}")
        return RequestFailed(Status.CANCELLED, f"cancelled by the client{what}")

    async def run(
        self, method: str, request_id: str, data: Bitstream | Payload | None, t_start: float,
        deadline: float | None = None, failure: RequestFailed | None = None, client: str = "",
        defer_ok: Callable[[RequestRecord], None] | None = None,
    ) -> tuple[InferOutcome | None, RequestFailed | None]:
        """Process one request and account for it: (outcome, None) or (None, failure).

        ``defer_ok``: an OK request's record is handed to it instead of being counted and logged here; the
        caller must pass it to `finish` once it knows how the answer's send ended (a send that ends after
        the caller's deadline is the caller's DEADLINE_EXCEEDED, not an OK).

        ``deadline`` is the caller's deadline on ``time.monotonic()``'s clock (None: none);
        ``failure`` is an error the entrypoint found before (the request is counted with it); ``client``
        whom the request counts against for fair scheduling (`FairSlots`). ``data`` may come in a
        `Payload`, which is emptied when the request ends; the returned failure carries no traceback.
        """
        payload = data if isinstance(data, Payload) else Payload(data)
        del data
        rec = RequestRecord(request_id=request_id, method=method, client=client)
        stop = WorkStop(deadline)
        self.metrics.inflight.inc()
        try:
            if failure is not None:
                raise failure
            problem = request_id_problem(request_id)
            if problem is not None:
                raise RequestFailed(Status.INVALID_ARGUMENT, problem)
            if payload.data is None:
                raise RequestFailed(Status.INVALID_ARGUMENT, "request carries no bitstream")
            outcome = await self._admit_and_work(payload, rec, t_start, stop)
            too_large = req.answer_problem(outcome.result, self.settings.max_message_bytes)
            if too_large is not None:  # else gRPC would fail the send of a request counted OK
                raise too_large
            return outcome, None
        except RequestFailed as exc:
            rec.status, rec.message = exc.status.name, exc.message
            if exc.limit is not None:
                self.metrics.limit_rejections.labels(exc.limit).inc()
            if exc.reason is not None:
                self.metrics.decode_errors.labels(split_label(rec.split), codec_label(rec.codec), exc.reason).inc()
            return None, exc.detached()
        except asyncio.CancelledError:
            stop.abandoned = "cancelled"
            gone = self.cancelled(deadline)
            rec.status, rec.message = gone.status.name, gone.message
            raise
        except Exception as exc:  # a bug: still an answer, and a log line with the traceback
            self.log.exception("request failed", extra={"fields": {"request_id": clip(request_id)}})
            bug = RequestFailed(Status.INTERNAL, f"{type(exc).__name__}: {exc}")
            rec.status, rec.message = "INTERNAL", bug.message
            return None, bug
        finally:
            payload.drop()
            self.metrics.inflight.dec()
            if defer_ok is not None and rec.status == "OK":
                defer_ok(rec)
            else:
                self.finish(rec)
