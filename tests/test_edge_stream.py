"""`EdgeClient.infer_stream`: many requests on one InferStream call (the high-rate client mode)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from _serving import cloud_settings, raw_bitstream

from splitfc.cloud.server import ServerThread
from splitfc.edge.client import EdgeClient
from splitfc.edge.settings import EdgeSettings

SPLIT = "dinov2-cls"


def test_a_stream_answers_every_request_as_unary_does_and_a_bad_one_alone() -> None:
    data = [raw_bitstream(SPLIT, i)[0] for i in range(3)]
    items = [(f"r{i}", data[i % 3]) for i in range(10)] + [("bad", b"not a bitstream")]

    async def scenario(target: str) -> tuple[dict[str, bytes], dict[str, tuple[str, str]], list[bytes]]:
        async with EdgeClient(target, EdgeSettings(retries=0)) as client:
            ok, failed = {}, {}
            async for ans in client.infer_stream(items, window=4):
                if ans.response is None:
                    failed[ans.request_id] = (ans.code.name, ans.details)
                else:
                    assert ans.rtt_s > 0
                    ok[ans.request_id] = ans.response.result.SerializeToString(deterministic=True)
            unary = [(await client.infer(f"u{i}", d)).response for i, d in enumerate(data)]
            return ok, failed, [u.result.SerializeToString(deterministic=True) for u in unary]

    with ServerThread(cloud_settings(splits=SPLIT)) as server:
        assert server.endpoints is not None
        ok, failed, unary = asyncio.run(scenario(server.endpoints.grpc_target))
    assert set(ok) == {f"r{i}" for i in range(10)}
    assert all(ok[f"r{i}"] == unary[i % 3] for i in range(10))
    assert failed["bad"][0] == grpc.StatusCode.INVALID_ARGUMENT.name and "bitstream" in failed["bad"][1]


def test_a_bitstream_too_large_for_one_message_is_refused() -> None:
    async def scenario() -> None:
        async with EdgeClient("127.0.0.1:1", EdgeSettings(deadline_s=5)) as client:
            async for _ in client.infer_stream([("big", b"x" * (64 << 20))]):
                pass

    with pytest.raises(ValueError, match="does not fit one stream message"):
        asyncio.run(scenario())
