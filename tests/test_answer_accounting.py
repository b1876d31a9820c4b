"""A request is counted with the status its caller saw: an answer whose send ends after the caller's
deadline is the caller's DEADLINE_EXCEEDED, not an OK (cloud/servicer.py, ``_count_when_sent``)."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from _serving import cloud_settings, raw_bitstream, wait_until

import splitfc.cloud.servicer as servicer_module
from splitfc.cloud.server import ServerThread
from splitfc.v1 import service_pb2 as svc

SPLIT = "dinov2-cls"


def _requests(server: ServerThread, status: str) -> float:
    return server.server.metrics.value(
        "splitfc_cloud_requests_total", {"split": SPLIT, "codec": "raw", "status": status},
    )


def test_an_answer_sent_after_the_deadline_counts_as_deadline_exceeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine finishes the request well within the deadline; building the answer then takes past it
    (a stand-in for a send that does not complete in time). The client sees DEADLINE_EXCEEDED, and so
    must the metrics: the old code counted OK as soon as the engine was done."""
    real = servicer_module._response
    slow = {"on": False}

    def late_response(outcome: Any) -> svc.InferResponse:
        if slow["on"]:
            time.sleep(0.8)  # past the 0.4 s deadline below
        return real(outcome)

    monkeypatch.setattr(servicer_module, "_response", late_response)
    data, _ = raw_bitstream(SPLIT)
    message = svc.InferRequest(request_id="late", bitstream=data).SerializeToString()
    with ServerThread(cloud_settings(splits=SPLIT)) as server:
        assert server.endpoints is not None
        with grpc.insecure_channel(server.endpoints.grpc_target) as channel:
            infer = channel.unary_unary("/splitfc.v1.SplitInference/Infer", request_serializer=None,
                                        response_deserializer=svc.InferResponse.FromString)
            ok = infer(message, timeout=30)  # in time: counted OK
            assert ok.request_id == "late"
            assert wait_until(lambda: _requests(server, "OK") == 1)
            slow["on"] = True
            with pytest.raises(grpc.RpcError) as err:
                infer(message, timeout=0.4)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert wait_until(lambda: _requests(server, "DEADLINE_EXCEEDED") == 1), server.server.metrics.exposition()
            assert _requests(server, "OK") == 1
