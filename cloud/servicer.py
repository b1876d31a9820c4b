"""The gRPC entrypoint: ``splitfc.v1.SplitInference`` over the `InferenceEngine`.

This module is the only one that turns engine outcomes into gRPC answers: it
reads requests (whole, chunked or streamed), reassembles chunks, hands bytes to
the engine with the caller's deadline, and maps `Status` to ``grpc.StatusCode``.

Every method is registered with a request deserializer that cannot fail (it
hands over the raw bytes) and parses here: a message that does not parse is
this module's to answer (INVALID_ARGUMENT, counted and logged under reason
``envelope``) instead of gRPC's (UNKNOWN, uncounted; in ``InferStream`` it used
to leave the call hanging). Every read waits at most ``upload_idle_seconds``
for the client's next message, so a stalled call ends (DEADLINE_EXCEEDED, limit
``upload_idle``) and gives back its per-client slot and its buffered bytes.
Chunked uploads are charged to the engine's ``upload_budget``
(``max_buffered_upload_bytes``, limit ``upload_bytes``). Failures are answered
with ``set_code``/``set_details`` rather than ``abort``: the exception ``abort``
raises would keep the request's frames (and bytes) in a reference cycle.

``Infer`` is served as a stream-unary handler (the wire is the same as unary): a
request over the gRPC message limit then reaches the handler as an empty stream,
so it is counted in the metrics instead of vanishing inside gRPC core.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from splitfc.cloud.engine import DEADLINE_SLACK_S, InferenceEngine
from splitfc.cloud.errors import RequestFailed, Status
from splitfc.cloud.request import InferOutcome, Payload, RequestRecord, request_id_problem
from splitfc.cloud.security import current_client
from splitfc.v1 import service_pb2 as svc

SERVICE_NAME = "splitfc.v1.SplitInference"
CANCEL_GRACE_S = 0.2
"""After a chunk stream ends short, how long to wait for gRPC to report a cancellation: a cancelled
upload reads as an early end of stream first, its cancellation arrives a moment later (0.03-3 ms in 20
tries on this machine). Only malformed (short) uploads wait for it."""


GRPC_AIO_LOGGER = "grpc._cython.cygrpc"
RECEIVE_FAILED_LOG = "Failed to receive any message from Core"
_receive_failed: ContextVar[bool] = ContextVar("splitfc_receive_failed", default=False)
OVER_LIMIT = object()
"""What `SplitInferenceServicer._read` returns for a message gRPC core refused (over ``max_message_bytes``)."""


class ReceiveFailures(logging.Filter):
    """Tells a message over the gRPC limit apart from an end of stream.

    grpcio's aio server (1.85) hands a handler the same ``EOF`` for both: a clean end of stream (the client
    half-closed, cancelled, went away or ran out of time) and a receive that failed in gRPC core, which on
    a live call means a message over ``max_receive_message_length`` (core answers the client
    RESOURCE_EXHAUSTED itself, then cancels the handler). Only the failed receive is logged, at DEBUG, from
    the reading task: this filter on grpcio's logger notes it in a context variable of that task and lets
    through only the records the logger passed before it was installed. Installed by `add_servicer`.
    """

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(RECEIVE_FAILED_LOG):
            _receive_failed.set(True)
        return record.levelno >= self.floor

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger(GRPC_AIO_LOGGER)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls(logger.getEffectiveLevel()))
            logger.setLevel(logging.DEBUG)


def grpc_status(status: Status) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of an engine `Status` (same names)."""
    return grpc.StatusCode[status.name]


def _deadline(context: grpc.aio.ServicerContext | None) -> float | None:
    """The caller's deadline on ``time.monotonic()``'s clock, or None."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


def _raw(data: bytes) -> bytes:
    """Request deserializer: the bytes as they came (parsed by the handler, so it answers parse failures)."""
    return data


def _not_a(kind: str) -> RequestFailed:
    return RequestFailed(
        Status.INVALID_ARGUMENT, f"request message is not a splitfc.v1.{kind} (protobuf parse failed)", "envelope",
    )


def parse_request(raw: bytes) -> tuple[str, Payload, RequestFailed | None]:
    """An ``InferRequest``'s (request id, bitstream, failure); never raises. The raw bytes are the caller's
    to drop; the returned `Payload` holds the only other copy of the bitstream."""
    try:
        req = svc.InferRequest.FromString(raw)
    except DecodeError:
        return "", Payload(None), _not_a("InferRequest")
    request_id = req.request_id or uuid.uuid4().hex
    kind = req.WhichOneof("input")
    data = req.bitstream if kind == "bitstream" else req.bitstream_message if kind == "bitstream_message" else None
    return request_id, Payload(data), None


def _echo_id(request_id: str) -> str:
    """The id a response may carry back: the client's, unless it was refused for its length."""
    return "" if request_id_problem(request_id) else request_id


def _response(outcome: InferOutcome) -> svc.InferResponse:
    stats = outcome.stats
    return svc.InferResponse(
        request_id=outcome.request_id,
        split=outcome.split,
        result=outcome.result,
        timing=svc.ServerTiming(**outcome.timings_ms),
        rate=svc.RateInfo(
            payload_bytes=stats["payload_bits"] // 8, bitstream_bytes=stats["total_bytes"],
            feature_points=stats["feature_points"], bpfp=stats["bpfp"],
        ),
    )


def _error_response(request_id: str, failure: RequestFailed) -> svc.InferResponse:
    code = grpc_status(failure.status)
    return svc.InferResponse(
        request_id=_echo_id(request_id),
        error=svc.Error(code=code.value[0], code_name=code.name, message=failure.message),
    )


class SplitInferenceServicer:
    """The ``splitfc.v1.SplitInference`` methods over an `InferenceEngine`."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    @property
    def idle_s(self) -> float:
        return self.engine.settings.upload_idle_seconds

    def _idle(self, what: str) -> RequestFailed:
        return RequestFailed(
            Status.DEADLINE_EXCEEDED,
            f"{what}: nothing received for {self.idle_s:g} s (upload_idle_seconds)", limit="upload_idle",
        )

    async def _read(self, context: grpc.aio.ServicerContext, timeout: float | None = None) -> Any:
        """The next message (raw bytes), ``grpc.aio.EOF``, or `OVER_LIMIT` (a message over the gRPC limit);
        raises TimeoutError past ``timeout`` (default ``upload_idle_seconds``).

        The read runs in the handler's own task (``asyncio.timeout``, not ``wait_for``): read from another
        task, a client's cancellation is never delivered to the handler (measured with grpcio 1.85)."""
        _receive_failed.set(False)
        async with asyncio.timeout(self.idle_s if timeout is None else timeout):
            raw = await context.read()
        return OVER_LIMIT if raw is grpc.aio.EOF and _receive_failed.get() else raw

    def _over_limit(self, what: str) -> RequestFailed:
        return RequestFailed(
            Status.RESOURCE_EXHAUSTED,
            f"{what} over the gRPC message limit of {self.engine.settings.max_message_bytes} bytes "
            f"(max_message_bytes; refused by gRPC before it was read)", "oversized", limit="message_bytes",
        )

    async def _answer(
        self, method: str, request_id: str, payload: Payload, context: grpc.aio.ServicerContext,
        t_start: float, failure: RequestFailed | None = None,
    ) -> svc.InferResponse | None:
        deadline = _deadline(context)
        outcome, failure = await self.engine.run(
            method, request_id, payload, t_start, deadline, failure, current_client.get(),
            defer_ok=lambda rec: self._count_when_sent(rec, context, deadline),
        )
        if failure is not None:
            context.set_code(grpc_status(failure.status))
            context.set_details(failure.message)
            return None
        assert outcome is not None
        return _response(outcome)

    def _count_when_sent(self, rec: RequestRecord, context: grpc.aio.ServicerContext, deadline: float | None) -> None:
        """Count (and log) an OK request: now when more than ``DEADLINE_SLACK_S`` of its deadline is left
        (or it has none), else once its call has ended (``context.add_done_callback``): if the call ended
        after the caller's deadline, or cancelled, the answer did not reach the caller in time and the
        request counts as what the caller saw, DEADLINE_EXCEEDED or CANCELLED (`InferenceEngine.cancelled`),
        not OK. (A send that ends within the transit time before the server's copy of the deadline is
        still counted OK.)"""
        engine = self.engine
        if deadline is None or deadline - time.monotonic() > DEADLINE_SLACK_S:
            engine.finish(rec)  # far from the deadline: counted now, when the client is about to have it
            return

        def ended(ctx: Any) -> None:
            # grpcio 1.85 reports a call whose deadline passed before its answer went out as not cancelled:
            # the time tells. The server's copy of the deadline is the caller's plus the transit time, so a
            # call that ends after it ended after the caller's too.
            late = deadline is not None and time.monotonic() >= deadline
            if late or ctx.cancelled():
                gone = engine.cancelled(deadline, " while the answer was sent")
                rec.status, rec.message = gone.status.name, gone.message
            engine.finish(rec)

        try:
            context.add_done_callback(ended)
        except Exception:  # a context without done callbacks: count it now
            engine.finish(rec)

    async def _count_gone(self, method: str, request_id: str, context: grpc.aio.ServicerContext,
                          t_start: float, what: str) -> None:
        """Account for a call cancelled (or past its deadline) before its request reached the engine."""
        deadline = _deadline(context)
        await self.engine.run(method, request_id, None, t_start, deadline, self.engine.cancelled(deadline, what))

    async def Infer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> svc.InferResponse | None:
        t_start = time.perf_counter()
        try:
            raw = await self._read(context)
        except TimeoutError:
            return await self._answer("Infer", "", Payload(None), context, t_start, self._idle("request"))
        except asyncio.CancelledError:
            await self._count_gone("Infer", "", context, t_start, " before the request arrived")
            raise
        if raw is OVER_LIMIT:
            return await self._answer("Infer", "", Payload(None), context, t_start, self._over_limit("request message"))
        if raw is grpc.aio.EOF:
            # No message: the client cancelled (its cancellation reaches this task a moment later) or
            # half-closed without sending one.
            try:
                await asyncio.sleep(CANCEL_GRACE_S)
            except asyncio.CancelledError:
                await self._count_gone("Infer", "", context, t_start, " before the request arrived")
                raise
            failure = RequestFailed(Status.INVALID_ARGUMENT, "call ended without a request message", "envelope")
            return await self._answer("Infer", "", Payload(None), context, t_start, failure)
        request_id, payload, failure = parse_request(raw)
        del raw
        return await self._answer("Infer", request_id, payload, context, t_start, failure)

    async def InferChunked(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> svc.InferResponse | None:
        t_start = time.perf_counter()
        settings, budget = self.engine.settings, self.engine.upload_budget
        limit = settings.max_bitstream_bytes
        client = current_client.get()
        began = time.monotonic()
        request_id = ""
        chunks: list[bytes] = []
        got = total = taken = 0
        first = True
        failure: RequestFailed | None = None
        try:
            try:
                while True:
                    wait, why = self._upload_wait(began, got)
                    try:
                        raw = await self._read(context, wait)
                    except TimeoutError:
                        failure = why(got, total)
                        break
                    if raw is grpc.aio.EOF:
                        break
                    if raw is OVER_LIMIT:
                        failure = self._over_limit(f"chunk (after {got} of {total} bytes)")
                        break
                    try:
                        chunk = svc.BitstreamChunk.FromString(raw)
                    except DecodeError:
                        failure = _not_a("BitstreamChunk")
                        break
                    del raw
                    piece = chunk.data
                    if first:
                        first = False
                        request_id = chunk.request_id or uuid.uuid4().hex
                        total = chunk.total_bytes
                        problem = request_id_problem(request_id)
                        if problem is not None:  # refused before the upload, not after it
                            failure = RequestFailed(Status.INVALID_ARGUMENT, problem)
                            break
                        if total > limit:
                            failure = RequestFailed(
                                Status.RESOURCE_EXHAUSTED,
                                f"announced bitstream of {total} bytes is over the limit of {limit}", "oversized",
                                limit="bitstream_bytes",
                            )
                            break
                        if total > budget.left(client):
                            failure = self._over_budget(total, client)
                            break
                    del chunk
                    if got + len(piece) > total:
                        failure = RequestFailed(
                            Status.INVALID_ARGUMENT, f"chunks carry more than the announced {total} bytes", "chunking",
                        )
                        break
                    if not budget.take(len(piece), client):
                        failure = self._over_budget(total, client, len(piece))
                        break
                    taken += len(piece)
                    got += len(piece)
                    chunks.append(piece)
                    del piece
                if failure is None and (first or got != total):
                    # A cancelled upload reads as an early end of stream; gRPC reports the cancellation a
                    # moment later by cancelling this task (CancelledError below).
                    await asyncio.sleep(CANCEL_GRACE_S)
                    failure = RequestFailed(
                        Status.INVALID_ARGUMENT,
                        "chunk stream ended before its first chunk" if first
                        else f"chunk stream ended after {got} of {total} announced bytes", "chunking",
                    )
            except asyncio.CancelledError:
                chunks.clear()
                await self._count_gone("InferChunked", request_id, context, t_start,
                                       f" during the upload, after {got} of {total} bytes")
                raise
            payload = Payload(None)
            if failure is None:
                payload.data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            return await self._answer("InferChunked", request_id, payload, context, t_start, failure)
        finally:
            budget.give(taken, client)

    def _upload_wait(self, began: float, got: int) -> tuple[float, Any]:
        """How long a chunked upload that began at ``began`` (monotonic) with ``got`` bytes so far may wait
        for its next chunk, and the failure (a function of got, total) of a wait that runs out: the idle
        timeout, the total upload time, or the minimum rate (``got`` must arrive within the grace time
        plus ``got / min_upload_bytes_per_second``), whichever ends first."""
        s, now = self.engine.settings, time.monotonic()
        waits: list[tuple[float, Any]] = [
            (self.idle_s, lambda g, t: self._idle(f"chunked upload after {g} of {t} bytes")),
            (began + s.max_upload_seconds - now, lambda g, t: RequestFailed(
                Status.DEADLINE_EXCEEDED, f"chunked upload took over max_upload_seconds={s.max_upload_seconds:g} "
                f"({g} of {t} bytes received)", limit="upload_time")),
        ]
        if s.min_upload_bytes_per_second > 0:
            waits.append((began + s.upload_rate_grace_seconds + got / s.min_upload_bytes_per_second - now,
                          lambda g, t: RequestFailed(
                              Status.DEADLINE_EXCEEDED,
                              f"chunked upload too slow: {g} of {t} bytes in {time.monotonic() - began:.1f} s, under "
                              f"min_upload_bytes_per_second={s.min_upload_bytes_per_second} (after "
                              f"upload_rate_grace_seconds={s.upload_rate_grace_seconds:g})", limit="upload_rate")))
        wait, why = min(waits, key=lambda w: w[0])
        return max(0.0, wait), why

    def _over_budget(self, total: int, client: str, more: int | None = None) -> RequestFailed:
        budget = self.engine.upload_budget
        if budget.refusal(total if more is None else more, client) == "client":
            return RequestFailed(
                Status.RESOURCE_EXHAUSTED,
                f"upload of {total} bytes does not fit this client's share of the buffered-upload budget: "
                f"{budget.by_client.get(client, 0)} of {budget.per_client} bytes "
                f"(max_buffered_upload_bytes_per_client) are held by its uploads in progress; retry later",
                limit="upload_bytes_per_client",
            )
        return RequestFailed(
            Status.RESOURCE_EXHAUSTED,
            f"upload of {total} bytes does not fit the buffered-upload budget: {budget.used} of "
            f"{budget.limit} bytes (max_buffered_upload_bytes) are held by uploads in progress; retry later",
            limit="upload_bytes",
        )

    async def InferStream(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.InferResponse]:
        # Answers to write, each with its OK request's record (counted once written; None: already counted).
        out: asyncio.Queue[tuple[svc.InferResponse, RequestRecord | None] | None] = asyncio.Queue()
        # Back-pressure: a request is read only while fewer than max_stream_unsent of this stream's requests
        # are running or answered but unsent; an answer frees its room once gRPC has written it
        # (context.write returns), so a client that does not read its answers stops the reading.
        room = asyncio.Semaphore(self.engine.settings.max_stream_unsent)
        tasks: set[asyncio.Task[None]] = set()
        deadline = _deadline(context)
        client = current_client.get()
        ended: list[RequestFailed] = []
        # Headers now, not with the first answer: a write that carries them could not be timed out (and,
        # left pending, made gRPC's status batch fail with GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
        await context.send_initial_metadata(())

        # An OK answer is counted once its write has completed (context.write returned), not when computed:
        # an answer whose write fails, or that is never written, counts as the status the stream ended with.
        closed: list[RequestFailed] = []  # set once answers are no longer written: why the stream ended

        def unsent(rec: RequestRecord | None, why: RequestFailed) -> None:
            if rec is not None:
                rec.status, rec.message = why.status.name, why.message
                self.engine.finish(rec)

        async def one(raw: bytes, t_start: float) -> None:
            request_id, payload, failure = parse_request(raw)
            del raw
            deferred: list[RequestRecord] = []
            outcome, failure = await self.engine.run(
                "InferStream", request_id, payload, t_start, deadline, failure, client, defer_ok=deferred.append,
            )
            rec = deferred[0] if deferred else None
            if closed:  # the writer has stopped: this answer will never reach the client
                unsent(rec, closed[0])
                return
            answer = _response(outcome) if outcome is not None else _error_response(request_id, failure)
            out.put_nowait((answer, rec))

        loop = asyncio.get_running_loop()
        timer: list[asyncio.Timeout] = []  # the pending read's idle timer

        def task_done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not tasks and timer:
                timer[0].reschedule(loop.time() + self.idle_s)  # idle from now: nothing left running

        async def reader() -> None:
            try:
                while True:
                    await room.acquire()
                    try:
                        # Idle = no message for upload_idle_seconds while none of its requests is running.
                        _receive_failed.set(False)
                        async with asyncio.timeout(None if tasks else self.idle_s) as t:
                            timer[:] = [t]
                            raw = await context.read()
                        if raw is grpc.aio.EOF and _receive_failed.get():
                            raw = OVER_LIMIT
                    except TimeoutError:
                        failure = self._idle("stream")
                        await self.engine.run("InferStream", "", None, time.perf_counter(), deadline, failure, client)
                        ended.append(failure)
                        break
                    finally:
                        timer.clear()
                    if raw is grpc.aio.EOF:
                        break
                    if raw is OVER_LIMIT:  # gRPC has answered the client RESOURCE_EXHAUSTED and ends the call
                        failure = self._over_limit("stream message")
                        await self.engine.run("InferStream", "", None, time.perf_counter(), deadline, failure, client)
                        ended.append(failure)
                        break
                    task = asyncio.create_task(one(raw, time.perf_counter()))
                    del raw
                    tasks.add(task)
                    task.add_done_callback(task_done)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            except Exception as exc:  # never leave the caller waiting: end the stream with a status
                ended.append(RequestFailed(Status.INTERNAL, f"stream reader failed: {type(exc).__name__}: {exc}"))
            finally:
                out.put_nowait(None)

        write_s = self.engine.settings.stream_write_timeout_seconds
        read_task = asyncio.create_task(reader())
        writing: RequestRecord | None = None  # the OK record of the answer being written
        write_failed: RequestFailed | None = None
        try:
            while (item := await out.get()) is not None:
                answer, writing = item
                try:
                    # Written here (not yielded) so that a write the client's flow control holds back can
                    # time out: a client that reads no answers would otherwise keep its call slot until its
                    # deadline. The status goes out behind the answers already sent.
                    async with asyncio.timeout(write_s):
                        await context.write(answer)
                except TimeoutError:
                    write_failed = RequestFailed(
                        Status.DEADLINE_EXCEEDED,
                        f"stream: an answer waited {write_s:g} s for the client to read it "
                        f"(stream_write_timeout_seconds)", limit="stream_write",
                    )
                    closed.append(write_failed)
                    unsent(writing, write_failed)
                    writing = None
                    await self.engine.run(
                        "InferStream", "", None, time.perf_counter(), deadline, write_failed, client,
                    )
                    ended.insert(0, write_failed)
                    break
                rec, writing = writing, None
                if rec is not None:  # written: the client has it (unless the call's deadline passed meanwhile)
                    if deadline is not None and time.monotonic() >= deadline:
                        unsent(rec, self.engine.cancelled(deadline, " while the answer was written"))
                    else:
                        self.engine.finish(rec)
                room.release()  # gRPC has written the answer
            else:
                await read_task
            if ended:
                context.set_code(grpc_status(ended[0].status))
                context.set_details(ended[0].message)
        finally:
            # Cancelled (the client went, or the deadline passed), a failed write or a write timeout: the
            # answers not written are counted as the stream ended, never OK.
            why = write_failed or self.engine.cancelled(deadline, " before the answer was written")
            closed.append(why)
            unsent(writing, why)
            while not out.empty():
                if (left := out.get_nowait()) is not None:
                    unsent(left[1], why)
            if not read_task.done():
                read_task.cancel()
            for task in list(tasks):
                task.cancel()
        return
        yield  # an async generator (the interceptor iterates it) that yields nothing: answers go by context.write

    async def GetInfo(self, request: bytes, context: grpc.aio.ServicerContext) -> svc.ServerInfo:
        return self.engine.info()  # GetInfoRequest has no fields: its bytes are not even parsed


def add_servicer(servicer: SplitInferenceServicer, server: grpc.aio.Server) -> None:
    """Register the service (``Infer`` as stream-unary on this side, raw-bytes deserializers: see the module doc)
    and install `ReceiveFailures` (messages over the gRPC limit counted as such)."""
    ReceiveFailures.install()
    handlers = {
        "Infer": grpc.stream_unary_rpc_method_handler(
            servicer.Infer, request_deserializer=_raw, response_serializer=svc.InferResponse.SerializeToString,
        ),
        "InferChunked": grpc.stream_unary_rpc_method_handler(
            servicer.InferChunked, request_deserializer=_raw,
            response_serializer=svc.InferResponse.SerializeToString,
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream, request_deserializer=_raw,
            response_serializer=svc.InferResponse.SerializeToString,
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo, request_deserializer=_raw, response_serializer=svc.ServerInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
