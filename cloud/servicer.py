"""The gRPC entrypoint: ``splitfc.v1.SplitInference`` over the `InferenceEngine`.

This module is the only one that turns engine outcomes into gRPC answers: it
reads requests (whole, chunked or streamed), reassembles chunks, hands bytes to
the engine with the caller's deadline, and maps `Status` to ``grpc.StatusCode``.

``Infer`` is served as a stream-unary handler (the wire is the same as unary): a
request over the gRPC message limit then reaches the handler as an empty stream,
so it is counted in the metrics instead of vanishing inside gRPC core.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from splitfc.cloud.engine import Bitstream, InferenceEngine, InferOutcome
from splitfc.cloud.errors import RequestFailed, Status
from splitfc.v1 import service_pb2 as svc

SERVICE_NAME = "splitfc.v1.SplitInference"


def grpc_status(status: Status) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of an engine `Status` (same names)."""
    return grpc.StatusCode[status.name]


def _deadline(context: grpc.aio.ServicerContext | None) -> float | None:
    """The caller's deadline on ``time.monotonic()``'s clock, or None."""
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else time.monotonic() + remaining


def _request_input(req: svc.InferRequest) -> Bitstream | None:
    kind = req.WhichOneof("input")
    if kind == "bitstream":
        return req.bitstream
    if kind == "bitstream_message":
        return req.bitstream_message
    return None


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


class SplitInferenceServicer:
    """The ``splitfc.v1.SplitInference`` methods over an `InferenceEngine`."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    async def _answer(
        self, method: str, request_id: str, data: Bitstream | None, context: grpc.aio.ServicerContext,
        t_start: float, failure: RequestFailed | None = None,
    ) -> svc.InferResponse:
        outcome, failure = await self.engine.run(method, request_id, data, t_start, _deadline(context), failure)
        if failure is not None:
            await context.abort(grpc_status(failure.status), failure.message)
        assert outcome is not None
        return _response(outcome)

    async def Infer(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> svc.InferResponse:
        t_start = time.perf_counter()
        req = await context.read()
        if req is grpc.aio.EOF:
            # gRPC core dropped the message (over max_message_bytes) or the client sent none.
            failure = RequestFailed(
                Status.RESOURCE_EXHAUSTED,
                f"request message missing or over the limit of {self.engine.settings.max_message_bytes} bytes",
                "oversized", limit="message_bytes",
            )
            return await self._answer("Infer", "", None, context, t_start, failure)
        request_id = req.request_id or uuid.uuid4().hex
        return await self._answer("Infer", request_id, _request_input(req), context, t_start)

    async def InferChunked(
        self, request_iterator: AsyncIterator[svc.BitstreamChunk], context: grpc.aio.ServicerContext
    ) -> svc.InferResponse:
        t_start = time.perf_counter()
        limit = self.engine.settings.max_bitstream_bytes
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
                        Status.RESOURCE_EXHAUSTED,
                        f"announced bitstream of {total} bytes is over the limit of {limit}", "oversized",
                        limit="bitstream_bytes",
                    )
                    break
                buf = bytearray()
            if len(buf) + len(chunk.data) > total:
                failure = RequestFailed(
                    Status.INVALID_ARGUMENT, f"chunks carry more than the announced {total} bytes", "chunking",
                )
                break
            buf += chunk.data
        if failure is None and (buf is None or len(buf) != total):
            got = 0 if buf is None else len(buf)
            failure = RequestFailed(
                Status.INVALID_ARGUMENT,
                f"chunk stream ended after {got} of {total} announced bytes "
                f"(or a chunk was over the {self.engine.settings.max_message_bytes}-byte message limit)",
                "chunking",
            )
        data = None if failure is not None or buf is None else bytes(buf)
        return await self._answer("InferChunked", request_id, data, context, t_start, failure)

    async def InferStream(
        self, request_iterator: AsyncIterator[svc.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.InferResponse]:
        out: asyncio.Queue[svc.InferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        deadline = _deadline(context)

        async def one(req: svc.InferRequest, t_start: float) -> None:
            request_id = req.request_id or uuid.uuid4().hex
            outcome, failure = await self.engine.run("InferStream", request_id, _request_input(req), t_start, deadline)
            if failure is not None:
                code = grpc_status(failure.status)
                response = svc.InferResponse(
                    request_id=request_id,
                    error=svc.Error(code=code.value[0], code_name=code.name, message=failure.message),
                )
            else:
                assert outcome is not None
                response = _response(outcome)
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
        return self.engine.info()


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
