"""Service hardening (issue 13), outside review of round two: what stayed open after the back-pressure fix.

A. slow-trickle chunked uploads (each chunk under the idle timeout) stayed open for ever, and one client
   could take the whole buffered-upload budget;
B'. an InferStream whose client reads no answers kept its call slot until its deadline;
C. answers over the message limit failed inside gRPC while the server counted them OK, and start-up did
   not check the limit against the served splits' answers;
D. statuses counted otherwise than the client saw them (over-limit chunk CANCELLED, over-limit stream
   message uncounted, an Infer cancelled before its message counted ``oversized``).

Times are deadlines (the calls' own timeouts and ``wait_until`` bounds), not measurements.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from _serving import ServerThread, cloud_settings, raw_bitstream, raw_calls, wait_until

from splitfc.cloud.admission import ByteBudget
from splitfc.cloud.settings import CloudSettings
from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import SplitModel, TaskOutput
from splitfc.edge.client import chunk_messages
from splitfc.v1 import service_pb2 as svc

SPLIT = "dinov2-cls"
KIB, MIB = 1 << 10, 1 << 20


def counted(server: ServerThread, status: str, split: str | None = None) -> float:
    """splitfc_cloud_requests_total of ``status`` (over every split/codec label, or one split's)."""
    total = 0.0
    for family in server.server.metrics.registry.collect():
        for sample in family.samples:
            if (sample.name == "splitfc_cloud_requests_total" and sample.labels.get("status") == status
                    and split in (None, sample.labels.get("split"))):
                total += sample.value
    return total


def limit(server: ServerThread, name: str) -> float:
    return server.server.metrics.value("splitfc_cloud_limit_rejections_total", {"limit": name})


def reason(server: ServerThread, name: str) -> float:
    return server.server.metrics.value(
        "splitfc_cloud_decode_errors_total", {"split": "unknown", "codec": "unknown", "reason": name})


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


# -- A. slow trickles and the per-client share of the upload budget --------------------------------------

def _trickle(stop: threading.Event, every_s: float = 0.3) -> Iterator[bytes]:
    """An upload announcing 1 MiB that sends 10 bytes every ``every_s`` (far under any idle timeout)."""
    yield svc.BitstreamChunk(request_id="trickle", total_bytes=MIB, data=b"\x00" * 10).SerializeToString()
    while not stop.wait(every_s):
        yield svc.BitstreamChunk(data=b"\x00" * 10).SerializeToString()


@pytest.mark.parametrize(("settings", "label", "words"), [
    ({"min_upload_bytes_per_second": 1000, "upload_rate_grace_seconds": 1.0}, "upload_rate",
     "min_upload_bytes_per_second"),
    ({"min_upload_bytes_per_second": 0, "max_upload_seconds": 2.0}, "upload_time", "max_upload_seconds"),
], ids=["min-rate", "max-time"])
def test_a_trickling_upload_ends_with_deadline_exceeded(settings: dict[str, Any], label: str, words: str) -> None:
    """10 bytes every 0.3 s with a 5 s idle timeout: ended by the rate (or total time) bound after about
    2 s, DEADLINE_EXCEEDED counted under its own label; the slot and buffered bytes come back. The old
    server kept the upload open until the client's own 15 s deadline."""
    stop = threading.Event()
    try:
        with ServerThread(cloud_settings(splits=SPLIT, upload_idle_seconds=5.0, max_streams_per_client=1,
                                         **settings)) as server:
            _, chunked, _ = raw_calls(server.endpoints.grpc_target)
            t0 = time.monotonic()
            code, details = _code(lambda: chunked(_trickle(stop), timeout=15))
            took = time.monotonic() - t0
            print(f"trickle of 10 bytes per 0.3 s ({label}): ended after {took:.1f} s: {details}")
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and words in details, details
            assert took < 8, f"the trickle lasted {took:.1f} s"
            assert limit(server, label) == 1 and limit(server, "upload_idle") == 0
            assert counted(server, "DEADLINE_EXCEEDED") == 1
            assert wait_until(lambda: server.server.metrics.value("splitfc_cloud_buffered_upload_bytes") == 0, 5)
            data, _ = raw_bitstream(SPLIT)  # the one slot of this client is free again
            ok = chunked(iter([c.SerializeToString() for c in chunk_messages("ok", data, 8192)]), timeout=30)
            assert ok.result.task == "cls"
    finally:
        stop.set()


def test_an_upload_at_a_fair_rate_is_not_cut() -> None:
    """The rate bound counts from the upload's start: 64 KiB in 16 chunks over about 1.6 s at a 1000 B/s
    minimum (and a 1 s grace) goes through."""
    data, _ = raw_bitstream(SPLIT)
    chunks = [c.SerializeToString() for c in chunk_messages("fair", data, len(data) // 16 + 1)]

    def paced() -> Iterator[bytes]:
        for c in chunks:
            time.sleep(0.1)
            yield c

    settings = cloud_settings(splits=SPLIT, min_upload_bytes_per_second=1000, upload_rate_grace_seconds=1.0)
    with ServerThread(settings) as server:
        _, chunked, _ = raw_calls(server.endpoints.grpc_target)
        assert chunked(paced(), timeout=30).result.task == "cls"
        assert limit(server, "upload_rate") == 0


def test_one_client_cannot_take_the_whole_upload_budget() -> None:
    """Budget 4 MiB, share 1 MiB: client A holding 768 KiB is refused a second upload of 512 KiB
    (RESOURCE_EXHAUSTED, upload_bytes_per_client) while client B (another token) still uploads; the old
    server took it (3.25 MiB of the 4 were free)."""
    settings = cloud_settings(splits=SPLIT, max_bitstream_bytes=MIB, max_buffered_upload_bytes=4 * MIB,
                              max_buffered_upload_bytes_per_client=MIB, auth_tokens="token-a,token-b")
    hold = threading.Event()
    piece = b"\x00" * (256 * KIB)

    def partial() -> Iterator[bytes]:
        yield svc.BitstreamChunk(request_id="held", total_bytes=MIB, data=piece).SerializeToString()
        for _ in range(2):
            yield svc.BitstreamChunk(data=piece).SerializeToString()
        hold.wait(30)

    a, b = [("authorization", "Bearer token-a")], [("authorization", "Bearer token-b")]
    data, _ = raw_bitstream(SPLIT)
    upload = [c.SerializeToString() for c in chunk_messages("up", data, 8192)]
    try:
        with ServerThread(settings) as server:
            _, chunked, _ = raw_calls(server.endpoints.grpc_target)
            held = chunked.future(partial(), timeout=30, metadata=a)
            assert wait_until(lambda: server.server.metrics.value("splitfc_cloud_buffered_upload_bytes") == 768 * KIB,
                              15)
            second = svc.BitstreamChunk(request_id="second", total_bytes=512 * KIB, data=piece).SerializeToString()
            code, details = _code(lambda: chunked(iter([second]), timeout=15, metadata=a))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert "max_buffered_upload_bytes_per_client" in details and f"{768 * KIB} of {MIB}" in details
            assert limit(server, "upload_bytes_per_client") == 1 and limit(server, "upload_bytes") == 0
            assert chunked(iter(upload), timeout=15, metadata=b).result.task == "cls"
            held.cancel()
            hold.set()
            assert wait_until(lambda: server.server.metrics.value("splitfc_cloud_buffered_upload_bytes") == 0, 15)
            assert chunked(iter(upload), timeout=15, metadata=a).result.task == "cls"  # A's share is back
    finally:
        hold.set()


def test_the_byte_budget_keeps_each_clients_share() -> None:
    budget = ByteBudget(100, lambda _n: None, per_client=40)
    assert budget.take(40, "a") and not budget.take(1, "a") and budget.refusal(1, "a") == "client"
    assert budget.take(40, "b") and budget.left("c") == 20 and budget.refusal(21, "c") == "total"
    budget.give(40, "a")
    assert budget.by_client == {"b": 40} and budget.left("a") == 40


def test_upload_settings_that_cannot_work_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_buffered_upload_bytes_per_client"):
        CloudSettings(max_bitstream_bytes=64 * MIB, max_buffered_upload_bytes_per_client=32 * MIB)
    for field in ("max_upload_seconds", "stream_write_timeout_seconds"):
        with pytest.raises(ValueError, match="must be > 0"):
            CloudSettings(**{field: 0})
    with pytest.raises(ValueError, match="must be >= 0"):
        CloudSettings(min_upload_bytes_per_second=-1)
    assert CloudSettings().upload_bytes_per_client() == 256 * MIB  # a quarter of 1 GiB
    monkeypatch.setenv("SPLITFC_CLOUD_MAX_UPLOAD_SECONDS", "5")
    monkeypatch.setenv("SPLITFC_CLOUD_STREAM_WRITE_TIMEOUT_SECONDS", "7")
    assert (CloudSettings().max_upload_seconds, CloudSettings().stream_write_timeout_seconds) == (5, 7)


# -- B'. a stream whose client reads nothing gives its slot back --------------------------------------

def test_a_stream_whose_answers_are_never_read_ends_and_frees_its_slot() -> None:
    """A client (one call slot) sends Dpt requests on an InferStream and reads nothing: once the transport's
    windows are full the server's write waits; after stream_write_timeout_seconds (2 s) the stream ends
    DEADLINE_EXCEEDED (counted, limit stream_write) and the client's slot is free for its next call. The
    old server held the slot until the stream's deadline (60 s here)."""
    data, _ = raw_bitstream("dinov2-dpt")
    hold = threading.Event()

    def requests() -> Iterator[bytes]:
        for i in range(150):
            yield svc.InferRequest(request_id=f"r{i}", bitstream=data).SerializeToString()
        hold.wait(60)

    settings = cloud_settings(splits="dinov2-dpt", max_streams_per_client=1, upload_idle_seconds=60,
                              stream_write_timeout_seconds=2)
    try:
        with ServerThread(settings) as server:
            infer, _, stream = raw_calls(server.endpoints.grpc_target)
            t0 = time.monotonic()
            answers = stream(requests(), timeout=60)

            infers_ok = [0]  # the slot probes' own OK answers (same split)

            def slot_free() -> bool:
                try:
                    answer = infer(svc.InferRequest(bitstream=data).SerializeToString(), timeout=5)
                    infers_ok[0] += 1
                    return answer.result.task == "dpt"
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                    return False

            assert wait_until(lambda: counted(server, "OK", "dinov2-dpt") >= 1, 30)  # the stream is being served
            assert not slot_free()  # and holds the client's one slot
            assert wait_until(slot_free, 40, interval=0.5), "the unread stream still holds the client's slot"
            answered = counted(server, "OK", "dinov2-dpt") - 1
            print(f"unread InferStream: slot free {time.monotonic() - t0:.1f} s after it opened "
                  f"({answered:.0f} answers computed, stream_write_timeout_seconds=2)")
            assert limit(server, "stream_write") == 1
            # The stream's end, plus (at least) the answer whose write timed out: counted DEADLINE_EXCEEDED,
            # as the client saw the stream end, never OK (the old code counted every computed answer OK).
            assert counted(server, "DEADLINE_EXCEEDED") >= 2
            got = 0
            with pytest.raises(grpc.RpcError) as info:
                for answer in answers:
                    assert answer.result.task == "dpt"
                    got += 1
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "stream_write_timeout_seconds" in (info.value.details() or "")
            assert got > 0  # the answers written before the timeout still arrive, then the status
            # OK counts the stream's answers whose write completed: never one the client did not get. (The
            # answer whose write timed out stays queued in gRPC and still reached this client, which read
            # at last: counted DEADLINE_EXCEEDED, hence got - 1. The old code counted every computed
            # answer OK, the ones still waiting to be written too.)
            assert got - 1 <= counted(server, "OK", "dinov2-dpt") - infers_ok[0] <= got
    finally:
        hold.set()


# -- C. answers and the message limit ---------------------------------------------------------------------

def test_start_up_refuses_a_message_limit_below_a_served_answer() -> None:
    """Tiny Dpt answers are about 62 KB: a 32 KiB limit cannot carry them."""
    server = ServerThread(cloud_settings(splits="dinov2-dpt", max_message_bytes=32 * KIB))
    try:
        with pytest.raises(SplitfcError, match=r"max_message_bytes=32768 cannot hold split dinov2-dpt's answers"):
            server.start()
    finally:
        server.stop()


def test_cloud_serve_exits_with_one_line_for_a_limit_below_an_answer() -> None:
    env = {**os.environ, "SPLITFC_CLOUD_MAX_MESSAGE_BYTES": str(32 * KIB)}
    run = subprocess.run([sys.executable, "-m", "splitfc", "cloud", "serve", "--grpc-port", "0", "--http-port", "0",
                          "--splits", "dinov2-dpt"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("splitfc: error:") and "cannot hold split dinov2-dpt's answers" in last, run.stderr
    assert "Traceback" not in run.stderr


def test_an_answer_over_the_message_limit_is_counted_with_its_status() -> None:
    """With the start-up check off, a Dpt answer (62 KB) over a 32 KiB limit: the client gets
    RESOURCE_EXHAUSTED naming the answer's size, and the server counts RESOURCE_EXHAUSTED (answer_bytes),
    not OK (the old server counted OK while gRPC failed the send)."""
    data, _ = raw_bitstream("dinov2-dpt")
    settings = cloud_settings(splits="dinov2-dpt", max_message_bytes=32 * KIB, check_answer_sizes=False)
    with ServerThread(settings) as server:
        _, chunked, _ = raw_calls(server.endpoints.grpc_target)
        chunks = [c.SerializeToString() for c in chunk_messages("big-answer", data, 16 * KIB)]
        code, details = _code(lambda: chunked(iter(chunks), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "answer of" in details, details
        assert counted(server, "OK") == 0
        assert counted(server, "RESOURCE_EXHAUSTED", "dinov2-dpt") == 1
        assert limit(server, "answer_bytes") == 1


# -- D. statuses counted as the client sees them ----------------------------------------------------------

@pytest.fixture(scope="module")
def small() -> Iterator[ServerThread]:
    with ServerThread(cloud_settings(splits=SPLIT, max_message_bytes=64 * KIB)) as server:
        yield server


def test_an_over_limit_chunk_is_counted_resource_exhausted(small: ServerThread) -> None:
    _, chunked, _ = raw_calls(small.endpoints.grpc_target)
    before = counted(small, "RESOURCE_EXHAUSTED"), counted(small, "CANCELLED"), limit(small, "message_bytes")
    first = svc.BitstreamChunk(request_id="c", total_bytes=200 * KIB, data=bytes(16 * KIB)).SerializeToString()
    big = svc.BitstreamChunk(data=bytes(100 * KIB)).SerializeToString()
    code, _ = _code(lambda: chunked(iter([first, big]), timeout=15))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_until(lambda: counted(small, "RESOURCE_EXHAUSTED") == before[0] + 1, 5)
    time.sleep(0.5)  # a late, wrong CANCELLED would show up here
    assert counted(small, "CANCELLED") == before[1]
    assert limit(small, "message_bytes") == before[2] + 1


def test_an_over_limit_stream_message_is_counted(small: ServerThread) -> None:
    _, _, stream = raw_calls(small.endpoints.grpc_target)
    data, _ = raw_bitstream(SPLIT)
    before = counted(small, "RESOURCE_EXHAUSTED"), counted(small, "OK"), limit(small, "message_bytes")
    messages = [svc.InferRequest(request_id="ok", bitstream=data).SerializeToString(),
                svc.InferRequest(request_id="big", bitstream=bytes(100 * KIB)).SerializeToString()]

    def slowly() -> Iterator[bytes]:
        yield messages[0]
        time.sleep(0.5)  # the first answer comes back before the over-limit message is sent
        yield messages[1]

    got: list[str] = []
    with pytest.raises(grpc.RpcError) as info:
        for answer in stream(slowly(), timeout=15):
            got.append(answer.request_id)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert got == ["ok"]
    assert wait_until(lambda: counted(small, "RESOURCE_EXHAUSTED") == before[0] + 1, 5)
    assert counted(small, "OK") == before[1] + 1 and limit(small, "message_bytes") == before[2] + 1


def test_an_infer_cancelled_before_its_message_is_counted_cancelled(small: ServerThread) -> None:
    """Infer's request never sent (the client cancels first): CANCELLED, not ``oversized``; an Infer whose
    message is over the limit is still RESOURCE_EXHAUSTED ``oversized``, and a call that half-closes
    without a message is INVALID_ARGUMENT."""
    channel = grpc.insecure_channel(small.endpoints.grpc_target)
    infer = channel.stream_unary("/splitfc.v1.SplitInference/Infer", request_serializer=lambda b: b,
                                 response_deserializer=svc.InferResponse.FromString)
    go = threading.Event()

    def late() -> Iterator[bytes]:
        go.wait(30)
        yield b""

    before = counted(small, "CANCELLED"), reason(small, "oversized"), limit(small, "message_bytes")
    call = infer.future(late(), timeout=30)
    time.sleep(0.5)
    call.cancel()
    go.set()
    assert wait_until(lambda: counted(small, "CANCELLED") == before[0] + 1, 5)
    assert reason(small, "oversized") == before[1] and limit(small, "message_bytes") == before[2]
    code, _ = _code(lambda: infer(iter([svc.InferRequest(bitstream=bytes(100 * KIB)).SerializeToString()]),
                                  timeout=15))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wait_until(lambda: reason(small, "oversized") == before[1] + 1, 5)
    assert limit(small, "message_bytes") == before[2] + 1
    code, details = _code(lambda: infer(iter([]), timeout=15))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "without a request message" in details
    channel.close()


class _BigAnswers(SplitModel):
    """The tiny Dpt model with 4 MiB answers (1024 x 1024 float32 depth): its first answer's write waits."""

    def __init__(self, inner: SplitModel) -> None:
        self.inner, self.spec, self.preset = inner, inner.spec, inner.preset

    def head(self, inputs: Any) -> Any:
        return self.inner.head(inputs)

    def tail(self, features: Any) -> TaskOutput:
        return TaskOutput(task="dpt", depth=np.full((1024, 1024), 1.5, np.float32))

    def forward_unsplit(self, inputs: Any) -> Any:
        return self.inner.forward_unsplit(inputs)

    def expected_shape(self) -> tuple[int | None, ...]:
        return self.inner.expected_shape()


def test_a_stream_whose_first_answer_is_never_read_ends_with_its_status() -> None:
    """4 MiB answers, nothing read for 4 s, write timeout 1 s: the first write times out and the client,
    once it reads, gets DEADLINE_EXCEEDED naming the timeout. Found attacking the running cloud: the first
    answer carried the response headers, and such a write did not time out (nothing counted in 20 s; left
    pending instead, gRPC's status batch then failed with GRPC_CALL_ERROR_TOO_MANY_OPERATIONS)."""
    from splitfc.common.models import get_split_model

    data, _ = raw_bitstream("dinov2-dpt")
    hold = threading.Event()

    def requests() -> Iterator[bytes]:
        yield svc.InferRequest(request_id="r0", bitstream=data).SerializeToString()
        hold.wait(30)

    settings = cloud_settings(splits="dinov2-dpt", max_message_bytes=8 * MIB, stream_write_timeout_seconds=1,
                              upload_idle_seconds=60, check_answer_sizes=False)
    try:
        with ServerThread(settings, model_loader=lambda s, p: _BigAnswers(get_split_model(s, p))) as server:
            # No BDP probing: the client's receive window stays at its initial size, so the 4 MiB answer's
            # write must wait (with probing the window could grow past the answer and the write complete).
            _, _, stream = raw_calls(server.endpoints.grpc_target, 8 * MIB, options=(("grpc.http2.bdp_probe", 0),))
            answers = stream(requests(), timeout=30)
            assert wait_until(lambda: limit(server, "stream_write") == 1, 20)
            time.sleep(2)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                for answer in answers:
                    assert answer.result.task == "dpt"
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
            assert "stream_write_timeout_seconds" in (info.value.details() or "")
            assert time.monotonic() - t0 < 10  # the status was there, not the client's own deadline
    finally:
        hold.set()
