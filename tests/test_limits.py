"""Every limit refuses before work, with its own status code and its own metric label."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from _serving import BlockingModel, ServerThread, cloud_settings, raw_bitstream, wait_until
from _slow_cloud import SlowModel

from splitfc.common.models import get_split_model
from splitfc.edge.client import chunk_messages
from splitfc.v1 import service_pb2 as svc
from splitfc.v1 import service_pb2_grpc as svc_grpc

SPLIT = "dinov2-cls"


def stub(server: ServerThread) -> svc_grpc.SplitInferenceStub:
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    return svc_grpc.SplitInferenceStub(grpc.insecure_channel(server.endpoints.grpc_target, options=opts))


def rejections(server: ServerThread) -> dict[str, float]:
    m = server.server.metrics
    return {
        limit: m.value("splitfc_cloud_limit_rejections_total", {"limit": limit})
        for limit in ("message_bytes", "bitstream_bytes", "elements", "decode_time", "streams_per_client", "queue",
                      "upload_bytes", "upload_idle")
    }


def decodes(server: ServerThread) -> float:
    return server.server.metrics.value("splitfc_cloud_stage_seconds_count", {"split": SPLIT, "stage": "decode"})


@pytest.fixture
def blocking() -> Iterator[tuple[threading.Event, threading.Semaphore, object]]:
    release, entered = threading.Event(), threading.Semaphore(0)

    def loader(split: str, preset: str) -> BlockingModel:
        return BlockingModel(get_split_model(split, preset), release, entered)

    yield release, entered, loader
    release.set()


def test_size_and_element_limits_each_have_their_status_and_label() -> None:
    data, _ = raw_bitstream(SPLIT)  # 33 kB
    settings = cloud_settings(splits=SPLIT, max_message_bytes=20_000, max_bitstream_bytes=10_000,
                              max_elements={SPLIT: 100})
    with ServerThread(settings) as server:
        s = stub(server)
        with pytest.raises(grpc.RpcError) as info:  # one message over max_message_bytes
            s.Infer(svc.InferRequest(bitstream=data), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:  # chunks announcing more than max_bitstream_bytes
            s.InferChunked(iter(chunk_messages("c", data, 8000)), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "announced bitstream of 33" in info.value.details()
        assert rejections(server) == {"message_bytes": 1, "bitstream_bytes": 1, "elements": 0, "decode_time": 0,
                                      "streams_per_client": 0, "queue": 0, "upload_bytes": 0, "upload_idle": 0}
    with ServerThread(cloud_settings(splits=SPLIT, max_elements={SPLIT: 100})) as server:
        with pytest.raises(grpc.RpcError) as info:  # declared elements over max_elements: refused before decoding
            stub(server).Infer(svc.InferRequest(bitstream=data), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "over the limit of 100" in info.value.details()
        assert rejections(server)["elements"] == 1 and decodes(server) == 0


def test_decode_time_limit_answers_resource_exhausted_without_waiting_for_the_worker() -> None:
    loader = lambda split, preset: SlowModel(get_split_model(split, preset), 1.5)  # noqa: E731
    data, _ = raw_bitstream(SPLIT)
    with ServerThread(cloud_settings(splits=SPLIT, max_decode_seconds=0.3), model_loader=loader) as server:
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            stub(server).Infer(svc.InferRequest(bitstream=data), timeout=30)
        assert time.perf_counter() - t0 < 1.4
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_decode_seconds=0.3" in info.value.details()
        assert rejections(server)["decode_time"] == 1
        m = server.server.metrics
        assert m.value("splitfc_cloud_requests_total", {"split": SPLIT, "codec": "raw",
                                                        "status": "RESOURCE_EXHAUSTED"}) == 1


def test_streams_per_client_are_bounded_per_token(blocking: tuple) -> None:
    release, entered, loader = blocking
    data, _ = raw_bitstream(SPLIT)
    settings = cloud_settings(splits=SPLIT, max_streams_per_client=2, auth_tokens="tok-a,tok-b")
    with ServerThread(settings, model_loader=loader) as server:
        s = stub(server)
        a, b = (("authorization", "Bearer tok-a"),), (("authorization", "Bearer tok-b"),)
        held = [s.Infer.future(svc.InferRequest(request_id=f"h{i}", bitstream=data), metadata=a, timeout=60)
                for i in range(2)]
        assert entered.acquire(timeout=30) and entered.acquire(timeout=30)
        with pytest.raises(grpc.RpcError) as info:  # a third call of the same client
            s.GetInfo(svc.GetInfoRequest(), metadata=a, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_client 2" in info.value.details()
        assert s.GetInfo(svc.GetInfoRequest(), metadata=b, timeout=10).ready  # another client is not affected
        assert rejections(server)["streams_per_client"] == 1
        release.set()
        assert [f.result().request_id for f in held] == ["h0", "h1"]
        assert s.GetInfo(svc.GetInfoRequest(), metadata=a, timeout=10).ready  # slots given back


def test_queue_limit_has_its_own_label(blocking: tuple) -> None:
    release, entered, loader = blocking
    data, _ = raw_bitstream(SPLIT)
    with ServerThread(cloud_settings(splits=SPLIT, max_concurrency=1, max_queue=0), model_loader=loader) as server:
        s = stub(server)
        held = s.Infer.future(svc.InferRequest(request_id="h", bitstream=data), timeout=60)
        assert entered.acquire(timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            s.Infer(svc.InferRequest(bitstream=data), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in info.value.details()
        assert rejections(server)["queue"] == 1
        release.set()
        assert held.result().request_id == "h"
        assert wait_until(lambda: decodes(server) == 1)
