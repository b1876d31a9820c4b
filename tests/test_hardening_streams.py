"""Service hardening, round three (issue 13, outside review): InferStream back-pressure.

A client that sends requests on an InferStream and never reads the answers used to make the server decode
every request and queue every answer (+97 MiB RSS per 1,200 unread Dpt answers). The server now reads a
stream's next request only while fewer than ``max_stream_unsent`` of its requests are running or answered
but not yet written (docs/hardening.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from _serving import ServerThread, cloud_settings, raw_bitstream, raw_calls, wait_until

from splitfc.v1 import service_pb2 as svc

SPLIT = "dinov2-dpt"
SENT = 200


def _answered(server: ServerThread) -> float:
    return server.server.metrics.value("splitfc_cloud_requests_total",
                                       {"split": SPLIT, "codec": "raw", "status": "OK"})


def _quiet(counter: list[int], server: ServerThread, still_s: float = 3.0, limit_s: float = 120.0) -> None:
    """Wait until neither the requests sent nor the answers computed have moved for ``still_s`` (or all sent
    and answered), at most ``limit_s``."""
    end = time.monotonic() + limit_s
    last, since = (-1, -1.0), time.monotonic()
    while time.monotonic() < end:
        now = (counter[0], _answered(server))
        if now == (SENT, float(SENT)):
            return
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still_s:
            return
        time.sleep(0.1)


@pytest.mark.parametrize("unsent", [4])
def test_a_stream_whose_client_does_not_read_stops_being_read(unsent: int) -> None:
    """200 Dpt requests (62 KB answers) on one stream whose client reads nothing: the server stops reading
    after a bounded number (answers in flight + what the transport's windows hold), and once the client
    reads, every answer arrives, correct. The old server read and answered all 200."""
    data, _ = raw_bitstream(SPLIT)
    sent = [0]
    hold = threading.Event()

    def requests() -> Iterator[bytes]:
        for i in range(SENT):
            yield svc.InferRequest(request_id=f"r{i}", bitstream=data).SerializeToString()
            sent[0] += 1
        hold.wait(120)

    settings = cloud_settings(splits=SPLIT, max_stream_unsent=unsent, upload_idle_seconds=60)
    try:
        with ServerThread(settings) as server:
            _, _, stream = raw_calls(server.endpoints.grpc_target)
            answers = stream(requests(), timeout=300)
            _quiet(sent, server)
            answered = _answered(server)
            print(f"unread stream: {sent[0]} of {SENT} requests sent, {answered:.0f} answered")
            assert sent[0] < SENT, "the server read every request of a client that reads no answer"
            assert answered < SENT / 2, f"{answered:.0f} of {SENT} requests answered for a client that reads none"
            got = []
            for i, answer in enumerate(answers):
                got.append(answer.request_id)
                assert answer.result.task == "dpt"
                if i == SENT - 1:
                    hold.set()
            assert sorted(got) == sorted(f"r{i}" for i in range(SENT))  # answers come as they are done
            assert wait_until(lambda: _answered(server) == SENT, 30)
    finally:
        hold.set()
