"""The edge's gRPC client: send one serialized bitstream, get the task result back.

Bitstreams up to the chunk size go unary (``Infer``); larger ones as a stream
of chunks (``InferChunked``). The chunk size is ``chunk_bytes``, capped so that a
chunk plus its framing fits the smaller of this side's ``max_message_bytes`` and
the server's (read once from ``GetInfo`` when a bitstream is large enough for it
to matter). Only UNAVAILABLE and server-side stream resets (CANCELLED) are
retried (inference is idempotent), with exponential
backoff and jitter, inside one deadline for all attempts together.

The request message(s) of one bitstream are built and serialized once and reused
by every attempt; the bytes put on the wire are counted from their lengths.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from splitfc.common.transport import MIN_MESSAGE_BYTES, bitstream_room
from splitfc.edge.security import call_metadata, channel_for, proxy_note
from splitfc.edge.settings import EdgeSettings
from splitfc.v1 import service_pb2 as svc
from splitfc.v1 import service_pb2_grpc as svc_grpc

GRPC_FRAME_HEADER = 5
"""Bytes gRPC adds in front of every message on the wire (flag + length)."""

# Inference is idempotent: these are retried with backoff within the deadline.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
ALWAYS_FITS = bitstream_room(MIN_MESSAGE_BYTES)
"""Bitstreams up to this size fit one message of any server (none accepts a smaller message limit)."""
INFO_TIMEOUT_S = 5.0
UNREADY_PROBE_S = 2.0
"""`wait_ready`'s last GetInfo, after its timeout, that learns why the server cannot be reached."""


@dataclass
class CallResult:
    """The outcome of one request: a response, or a final gRPC status."""

    response: svc.InferResponse | None
    code: grpc.StatusCode
    details: str
    attempts: int
    rtt_s: float
    """Time of the successful (or last) attempt."""
    elapsed_s: float
    """All attempts and backoff together."""
    wire_bytes: int
    """Request bytes put on the wire by the last attempt: serialized messages + gRPC frame headers."""
    chunked: bool


def _method_path(name: str) -> str:
    """``/splitfc.v1.SplitInference/<name>``, read from the generated descriptor (the wire is defined once)."""
    service = svc.DESCRIPTOR.services_by_name["SplitInference"]
    return f"/{service.full_name}/{service.methods_by_name[name].name}"


def _as_is(data: bytes) -> bytes:
    """Request serializer for messages serialized beforehand."""
    return data


def chunk_messages(request_id: str, data: bytes, chunk_bytes: int) -> list[svc.BitstreamChunk]:
    """Split a serialized bitstream into chunks; the first carries the id and the total size."""
    chunks = []
    for i, start in enumerate(range(0, max(len(data), 1), chunk_bytes)):
        piece = data[start:start + chunk_bytes]
        if i == 0:
            chunks.append(svc.BitstreamChunk(request_id=request_id, total_bytes=len(data), data=piece))
        else:
            chunks.append(svc.BitstreamChunk(data=piece))
    return chunks


class EdgeClient:
    """An async client over one channel (use as ``async with``)."""

    def __init__(self, target: str, settings: EdgeSettings | None = None, warn: bool = True) -> None:
        self.target = target
        self.settings = settings or EdgeSettings()
        self.metadata = call_metadata(self.settings)
        """``authorization: Bearer ...`` on every call when a token is configured."""
        self.channel = channel_for(target, self.settings, warn=warn)
        self.stub = svc_grpc.SplitInferenceStub(self.channel)
        # Infer/InferChunked take requests serialized once by `request_messages` (reused on retries).
        self._infer_call = self.channel.unary_unary(
            _method_path("Infer"), request_serializer=_as_is, response_deserializer=svc.InferResponse.FromString
        )
        self._chunked_call = self.channel.stream_unary(
            _method_path("InferChunked"), request_serializer=_as_is,
            response_deserializer=svc.InferResponse.FromString,
        )
        self._stream_call = self.channel.stream_stream(
            _method_path("InferStream"), request_serializer=_as_is,
            response_deserializer=svc.InferResponse.FromString,
        )
        self.server_max_message_bytes: int | None = None
        """The server's message limit (GetInfo), once known."""
        self._limits_known = False
        self._limits_lock = asyncio.Lock()

    async def __aenter__(self) -> EdgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def info(self, timeout: float = 10.0, wait_for_ready: bool = True) -> svc.ServerInfo:
        info = await self.stub.GetInfo(
            svc.GetInfoRequest(), timeout=timeout, wait_for_ready=wait_for_ready, metadata=self.metadata
        )
        if info is not None:
            self._learn(info)
        return info

    def _learn(self, info: svc.ServerInfo) -> None:
        limit = info.limits.max_message_bytes
        self.server_max_message_bytes = int(limit) if limit >= MIN_MESSAGE_BYTES else None
        self._limits_known = True

    async def _learn_limits(self, timeout: float) -> None:
        """Ask the server for its message limit once (concurrent callers share the one call)."""
        async with self._limits_lock:
            if self._limits_known or timeout <= 0:
                return
            try:
                await self.info(timeout=min(INFO_TIMEOUT_S, timeout), wait_for_ready=False)
                self._limits_known = True  # also when the answer did not parse: use our own limit
            except grpc.aio.AioRpcError as exc:
                # UNAVAILABLE / a deadline: ask again next time; anything else (UNIMPLEMENTED, ...): stop asking.
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self._limits_known = True

    def message_limit(self) -> int:
        """The message limit both sides accept: ours, or the server's when smaller."""
        own = self.settings.max_message_bytes
        return own if self.server_max_message_bytes is None else min(own, self.server_max_message_bytes)

    def chunk_size(self) -> int:
        """Bitstream bytes per message: ``chunk_bytes``, capped by the message limit minus framing."""
        chunk = self.settings.chunk_bytes
        assert chunk is not None  # EdgeSettings fills it in
        return min(chunk, bitstream_room(self.message_limit()))

    async def wait_ready(self, timeout: float = 60.0) -> svc.ServerInfo:
        """Wait until the server answers GetInfo with ready = true."""
        end = time.monotonic() + timeout
        while True:
            try:
                info = await self.info(timeout=max(0.1, end - time.monotonic()))
                if info.ready:
                    return info
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            if time.monotonic() >= end:
                reason = await self._unready_reason()
                raise TimeoutError(f"server {self.target} not ready after {timeout:.0f} s{reason}")
            await asyncio.sleep(0.1)

    async def _unready_reason(self) -> str:
        """Why the server is not ready, for `wait_ready`'s error: ``": STATUS: details"`` (and `proxy_note`)
        of one GetInfo without wait_for_ready (which hides a connection failure behind DEADLINE_EXCEEDED),
        taking up to `UNREADY_PROBE_S`; ``": it answers ready = false"`` when it answers; never raises."""
        try:
            info = await self.info(timeout=UNREADY_PROBE_S, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            return f": {exc.code().name}: {exc.details() or 'no detail'}{proxy_note(self.target)}"
        return ": it answers ready = false" if not info.ready else ""

    def request_messages(self, request_id: str, data: bytes) -> tuple[bool, list[bytes]]:
        """(chunked, serialized messages) of one bitstream: one ``InferRequest``, or the ``BitstreamChunk`` s."""
        chunk = self.chunk_size()
        if len(data) <= chunk:
            return False, [svc.InferRequest(request_id=request_id, bitstream=data).SerializeToString()]
        return True, [c.SerializeToString() for c in chunk_messages(request_id, data, chunk)]

    def wire_bytes(self, request_id: str, data: bytes) -> int:
        """Request bytes one attempt puts on the wire: serialized messages + gRPC frame headers."""
        return sum(len(m) + GRPC_FRAME_HEADER for m in self.request_messages(request_id, data)[1])

    async def _attempt(self, chunked: bool, messages: list[bytes], timeout: float) -> svc.InferResponse:
        if not chunked:
            return await self._infer_call(messages[0], timeout=timeout, metadata=self.metadata)

        async def stream() -> AsyncIterator[bytes]:
            for m in messages:
                yield m

        return await self._chunked_call(stream(), timeout=timeout, metadata=self.metadata)

    def infer_stream(
        self, requests: AsyncIterator[tuple[str, bytes]] | list[tuple[str, bytes]], window: int = 8,
        deadline_s: float | None = None,
    ) -> AsyncIterator[StreamAnswer]:
        """Send many ``(request_id, serialized bitstream)`` on one ``InferStream`` call, at most ``window``
        unanswered at once (keep it <= the server's ``max_stream_unsent``, default 8, or the server stops
        reading until answers are read); yields a `StreamAnswer` per request, in completion order.

        For high request rates: one call carries every request, so gRPC's per-call cost (headers, a
        stream, a status) is paid once, not per request. No retries (a request's error comes back in its
        answer; if the call ends early, the requests in flight get its status); ``deadline_s`` (default:
        the settings' ``deadline_s``) bounds the whole call. Each bitstream must fit one message (no
        chunking) and ids must be unique among those in flight, else ValueError."""
        return _infer_stream(self, requests, window, deadline_s)

    async def infer(self, request_id: str, data: bytes, deadline_s: float | None = None) -> CallResult:
        """Send one serialized bitstream; retry UNAVAILABLE (and stream resets) within the deadline."""
        s = self.settings
        deadline_s = s.deadline_s if deadline_s is None else deadline_s
        t0 = time.perf_counter()
        end = t0 + deadline_s
        attempt = 0
        backoff = s.backoff_initial_s
        if len(data) > ALWAYS_FITS and not self._limits_known:
            await self._learn_limits((end - time.perf_counter()) / 2)
        chunked, messages = self.request_messages(request_id, data)
        wire = sum(len(m) + GRPC_FRAME_HEADER for m in messages)
        while True:
            attempt += 1
            remaining = end - time.perf_counter()
            if remaining <= 0:
                return CallResult(None, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before sending",
                                  attempt - 1, 0.0, time.perf_counter() - t0, 0, chunked)
            ta = time.perf_counter()
            try:
                resp = await self._attempt(chunked, messages, remaining)
                now = time.perf_counter()
                if resp is None:  # grpc.aio hands back None when the response bytes do not deserialize
                    return CallResult(None, grpc.StatusCode.INTERNAL, "malformed response: not an InferResponse",
                                      attempt, now - ta, now - t0, wire, chunked)
                return CallResult(resp, grpc.StatusCode.OK, "", attempt, now - ta, now - t0, wire, chunked)
            except grpc.aio.AioRpcError as exc:
                now = time.perf_counter()
                code, details = exc.code(), exc.details() or ""
                # CANCELLED is never asked for by the edge (its own deadline gives DEADLINE_EXCEEDED): it is a
                # stream reset on the way, e.g. nginx resetting the call when its replica dies. Both retry.
                retry = code in RETRYABLE and attempt <= s.retries
                sleep = min(backoff, s.backoff_max_s) * random.uniform(0.5, 1.0)
                if not retry or now + sleep >= end:
                    return CallResult(None, code, details, attempt, now - ta, now - t0, wire, chunked)
                await asyncio.sleep(sleep)
                backoff *= s.backoff_multiplier


@dataclass
class StreamAnswer:
    """One answer of `EdgeClient.infer_stream`: a response (``error`` unset), or the request's error."""

    request_id: str
    response: svc.InferResponse | None
    code: grpc.StatusCode
    details: str
    rtt_s: float
    """From writing the request to reading its answer."""


async def _infer_stream(
    client: EdgeClient, requests: AsyncIterator[tuple[str, bytes]] | list[tuple[str, bytes]], window: int,
    deadline_s: float | None,
) -> AsyncIterator[StreamAnswer]:
    """`EdgeClient.infer_stream` (module level so that the class keeps its shape)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    s = client.settings
    call = client._stream_call(timeout=s.deadline_s if deadline_s is None else deadline_s, metadata=client.metadata)
    room = asyncio.Semaphore(window)
    sent: dict[str, float] = {}
    room_limit = bitstream_room(client.message_limit())

    async def items() -> AsyncIterator[tuple[str, bytes]]:
        if isinstance(requests, list):
            for item in requests:
                yield item
        else:
            async for item in requests:
                yield item

    async def writer() -> None:
        async for request_id, data in items():
            if len(data) > room_limit:
                raise ValueError(f"bitstream of {len(data)} bytes does not fit one stream message "
                                 f"({room_limit} bytes); send it with infer() (chunked)")
            if request_id in sent:
                raise ValueError(f"request id {request_id!r} is already in flight on this stream")
            await room.acquire()
            sent[request_id] = time.perf_counter()
            await call.write(svc.InferRequest(request_id=request_id, bitstream=data).SerializeToString())
        await call.done_writing()

    write_task = asyncio.create_task(writer())

    def writer_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            call.cancel()  # ends the read below

    write_task.add_done_callback(writer_done)
    try:
        while True:
            try:
                resp = await call.read()
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                if write_task.done() and not write_task.cancelled() and write_task.exception() is not None:
                    raise write_task.exception() from None  # type: ignore[misc]
                raise
            if resp is grpc.aio.EOF:
                break
            now = time.perf_counter()
            t_sent = sent.pop(resp.request_id, now)
            room.release()
            if resp.HasField("error"):
                try:
                    code = grpc.StatusCode[resp.error.code_name]
                except KeyError:
                    code = grpc.StatusCode.UNKNOWN
                yield StreamAnswer(resp.request_id, None, code, resp.error.message, now - t_sent)
            else:
                yield StreamAnswer(resp.request_id, resp, grpc.StatusCode.OK, "", now - t_sent)
        await write_task  # raises what the writer raised (a bitstream too large for one message)
        code = await call.code()
        if code != grpc.StatusCode.OK:  # the call ended early: what was in flight fails with its status
            details = await call.details() or ""
            now = time.perf_counter()
            for request_id, t_sent in list(sent.items()):
                yield StreamAnswer(request_id, None, code, details, now - t_sent)
            sent.clear()
    except grpc.aio.AioRpcError as exc:
        now = time.perf_counter()
        for request_id, t_sent in list(sent.items()):
            yield StreamAnswer(request_id, None, exc.code(), exc.details() or "", now - t_sent)
    finally:
        if not write_task.done():
            write_task.cancel()
            call.cancel()

