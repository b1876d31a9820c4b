"""Service hardening, round two: one test (or more) per finding of a hostile client built from the .proto files.

1. a zstd frame declaring a huge content size (the output bound was ignored for such frames);
2. memory of failed and cancelled requests held by reference cycles until the garbage collector ran;
3. decode work unbounded by the payload and the served model (a 235-byte hyperprior payload, 57 s);
4. stalled uploads holding per-client slots and memory forever;
5. InferStream hanging after one malformed message;
6. client strings echoed whole (20 kB split name, 4 MiB request id);
7. chunks sized to the message limit itself;
8. small ones: unparseable envelopes, cancelled uploads, rates, ffmpeg addresses.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from _serving import (
    BlockingModel,
    ServerThread,
    cloud_settings,
    raw_bitstream,
    raw_calls,
    rss_mib,
    trim_heap,
    wait_until,
)

from splitfc.cloud.engine import InferenceEngine
from splitfc.cloud.metrics import CloudMetrics
from splitfc.cloud.settings import CloudSettings, default_max_elements
from splitfc.common.bitstream import decode_features, encode_features, parse_bitstream, validate_bitstream
from splitfc.common.codecs import CODECS
from splitfc.common.codecs.raw import RawCodec
from splitfc.common.errors import CodecError, HeaderError, SplitfcError, TooManyElementsError
from splitfc.common.models import get_split_model, tiny_samples
from splitfc.edge.client import EdgeClient
from splitfc.edge.settings import EdgeSettings
from splitfc.v1 import service_pb2 as svc
from splitfc.v1 import service_pb2_grpc as svc_grpc

SPLIT = "dinov2-cls"
MIB = 1 << 20


def metric(server: ServerThread, name: str, **labels: str) -> float:
    return server.server.metrics.value(name, labels)


def requests_with(server: ServerThread, status: str) -> float:
    """splitfc_cloud_requests_total of ``status`` over every split/codec label."""
    total = 0.0
    for family in server.server.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "splitfc_cloud_requests_total" and sample.labels.get("status") == status:
                total += sample.value
    return total


def stub(server: ServerThread) -> svc_grpc.SplitInferenceStub:
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    return svc_grpc.SplitInferenceStub(grpc.insecure_channel(server.endpoints.grpc_target, options=opts))


class _Lines(logging.Handler):
    """Keeps the ``fields`` of every request log record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(dict(getattr(record, "fields", {})))


@pytest.fixture(scope="module")
def cloud_log() -> Iterator[_Lines]:
    logger = logging.getLogger("test-hardening.requests")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    lines = _Lines()
    logger.addHandler(lines)
    yield lines
    logger.removeHandler(lines)


@pytest.fixture(scope="module")
def cloud(cloud_log: _Lines) -> Iterator[ServerThread]:
    logger = logging.getLogger("test-hardening.requests")
    with ServerThread(cloud_settings(splits=f"{SPLIT},llama3-csr"), logger=logger) as server:
        yield server


# -- 1. compression bomb ----------------------------------------------------------------------------

BOMB = """
import resource, zstandard, zlib, numpy as np
from splitfc.common.bitstream import decode_features, encode_features
from splitfc.common.codecs.raw import RawCodec
from splitfc.common.errors import SplitfcError
x = np.zeros((65, 128), np.float32)
msg = encode_features(x, "dinov2-cls", RawCodec(zstd_level=3), 0)
declared = {declared}
params = zstandard.ZstdCompressionParameters.from_level(3, window_log=17, write_content_size=int(declared))
c = zstandard.ZstdCompressor(compression_params=params).compressobj(size=(1 << 30) if declared else -1)
zeros = bytes(1 << 20)
bomb = b"".join([c.compress(zeros) for _ in range(1024)]) + c.flush()
msg.payload, msg.payload_crc32 = bomb, zlib.crc32(bomb)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_features(msg, 65 * 128)
    error = None
except SplitfcError as exc:
    error = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(bomb), (after - before) // 1024, error)
"""


@pytest.mark.parametrize("declared", [True, False], ids=["size-declared", "size-unknown"])
def test_zstd_bomb_never_produces_more_than_the_tensor_needs(declared: bool) -> None:
    """32 KB of raw+zstd payload whose frame expands to 1 GiB: refused, peak RSS up by far less than 1 GiB."""
    out = subprocess.run([sys.executable, "-c", BOMB.format(declared=declared)], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split(maxsplit=2)
    size, peak_mib, error = int(out[0]), int(out[1]), out[2]
    print(f"{size}-byte bomb ({'declared' if declared else 'unknown'} size): peak RSS +{peak_mib} MiB; {error}")
    assert size < 64 * 1024
    assert peak_mib < 64, f"decoding a {size}-byte bomb raised peak RSS by {peak_mib} MiB"
    assert "the tensor needs 33280" in error
    assert ("declares 1073741824 bytes" in error) if declared else ("more than 33280" in error)


def test_zstd_payloads_still_decode() -> None:
    x = np.random.default_rng(1).standard_normal((65, 128)).astype(np.float32)
    for level in (1, 19):
        msg = encode_features(x, SPLIT, RawCodec(zstd_level=level), 0)
        np.testing.assert_array_equal(decode_features(parse_bitstream(msg.SerializeToString())), x)


# -- 2. memory of failed and cancelled requests -----------------------------------------------------

def _big_bitstream(mib: int) -> bytes:
    msg = parse_bitstream(raw_bitstream(SPLIT)[0])
    msg.payload = b"\x01" * (mib * MIB)
    msg.payload_crc32 = zlib.crc32(msg.payload) ^ 1  # parsed and CRC-checked (all of it in memory), then refused
    return msg.SerializeToString()


MEMORY_MIB = 64


@pytest.fixture
def big_cloud() -> Iterator[ServerThread]:
    if not trim_heap():
        pytest.skip("needs glibc's malloc_trim to read live memory from RSS")
    limit = (MEMORY_MIB + 8) * MIB
    with ServerThread(cloud_settings(splits=SPLIT, max_message_bytes=limit, max_bitstream_bytes=limit)) as server:
        yield server


def _grown_without_gc(burst: Any) -> float:
    """RSS growth (MiB) across ``burst()`` with automatic garbage collection off, allocator caches trimmed."""
    gc.collect()
    gc.disable()
    try:
        trim_heap()
        before = rss_mib()
        burst()
        trim_heap()
        return rss_mib() - before
    finally:
        gc.enable()


def test_failed_requests_free_their_memory_without_the_garbage_collector(big_cloud: ServerThread) -> None:
    """Six failing 64 MiB requests with automatic collection off: the server's memory comes back (each
    used to stay, held by a reference cycle through the exception tracebacks of the failure)."""
    request = svc.InferRequest(request_id="big", bitstream=_big_bitstream(MEMORY_MIB)).SerializeToString()
    infer, _, _ = raw_calls(big_cloud.endpoints.grpc_target, (MEMORY_MIB + 16) * MIB)

    def fail() -> None:
        with pytest.raises(grpc.RpcError) as info:
            infer(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    fail()  # warm-up: first-use allocations are not what we measure
    grown = _grown_without_gc(lambda: [fail() for _ in range(6)])
    print(f"6 failed {MEMORY_MIB} MiB requests, GC off: RSS {grown:+.0f} MiB")
    # Kept requests would add 6 x MEMORY_MIB; the bound leaves room for the client side's buffers in this
    # process (a CI-like run under load measured +119 MiB).
    assert grown < 2.5 * MEMORY_MIB, f"RSS grew by {grown:.0f} MiB after 6 failed {MEMORY_MIB} MiB requests"


def test_cancelled_uploads_free_their_memory_without_the_garbage_collector(big_cloud: ServerThread) -> None:
    """Two chunked uploads cancelled after 64 MiB each, automatic collection off: their memory comes back."""
    _, chunked, _ = raw_calls(big_cloud.endpoints.grpc_target, (MEMORY_MIB + 16) * MIB)
    piece = svc.BitstreamChunk(data=b"\x02" * (4 * MIB)).SerializeToString()
    first = svc.BitstreamChunk(request_id="up", total_bytes=(MEMORY_MIB + 4) * MIB, data=b"\x02" * (4 * MIB))

    def cancel_one(n_done: int, chunks: int) -> None:
        sent, hold = threading.Event(), threading.Event()

        def upload() -> Iterator[bytes]:
            yield first.SerializeToString()
            for _ in range(chunks - 1):
                yield piece
            sent.set()
            hold.wait(60)

        call = chunked.future(upload(), timeout=60)
        try:
            assert sent.wait(60)
            # the server holds every chunk (not asserted: servers without the gauge get there all the same)
            wait_until(lambda: big_cloud.server.metrics.value("splitfc_cloud_buffered_upload_bytes")
                       >= chunks * 4 * MIB, 10)
            call.cancel()
        finally:
            hold.set()
        assert wait_until(lambda: sum(requests_with(big_cloud, s) for s in ("CANCELLED", "INVALID_ARGUMENT"))
                          == n_done + 1, 30)
        assert wait_until(lambda: big_cloud.server.metrics.value("splitfc_cloud_inflight_requests") == 0)

    cancel_one(0, 2)  # warm-up
    grown = _grown_without_gc(lambda: [cancel_one(i, MEMORY_MIB // 4) for i in (1, 2)])
    print(f"2 cancelled {MEMORY_MIB} MiB uploads, GC off: RSS {grown:+.0f} MiB")
    # Both uploads kept would be >= 2 x MEMORY_MIB; the bound leaves room for the client side's own buffers in
    # this process (measured +0..+72 MiB here, under load).
    assert grown < 1.5 * MEMORY_MIB, f"RSS grew by {grown:.0f} MiB after 2 cancelled {MEMORY_MIB} MiB uploads"
    assert requests_with(big_cloud, "CANCELLED") == 3


# -- 3. decode work bounded by the payload and the served model --------------------------------------

def _hyperprior_csr(tokens: int, payload_bytes: int) -> Any:
    """A llama3-csr hyperprior bitstream declaring ``tokens`` x 128 with a payload of ``payload_bytes``."""
    if CODECS["hyperprior"].unavailable_reason() is not None:
        pytest.skip("no hyperprior checkpoints")
    features = get_split_model("llama3-csr", "tiny").head(tiny_samples("llama3-csr", 1)[0].inputs)
    msg = encode_features(features, "llama3-csr", "hyperprior", 1)
    msg.tensors[0].shape[0] = tokens
    msg.preprocessing.frame_height = tokens
    msg.payload = b"\x02" + bytes(payload_bytes - 1)
    msg.payload_crc32 = zlib.crc32(msg.payload)
    return msg


def test_a_payload_cannot_declare_more_elements_than_it_can_carry() -> None:
    """The finding's 235-byte hyperprior payload declaring 262144 x 128: refused before any decoding."""
    msg = _hyperprior_csr(262144, 235)
    with pytest.raises(TooManyElementsError, match="235-byte hyperprior payload can carry"):
        validate_bitstream(msg, default_max_elements("llama3-csr"))


def test_csr_tokens_are_bounded_by_the_served_models_positions(cloud: ServerThread) -> None:
    msg = _hyperprior_csr(262144, 4096)  # enough bytes for the payload bound: the served model refuses it
    with pytest.raises(grpc.RpcError) as info:
        stub(cloud).Infer(svc.InferRequest(bitstream=msg.SerializeToString()), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "262144 tokens, over the limit of 1024" in info.value.details()
    assert metric(cloud, "splitfc_cloud_stage_seconds_count", split="llama3-csr", stage="decode") == 0
    csr = [s for s in stub(cloud).GetInfo(svc.GetInfoRequest(), timeout=10).splits if s.split == "llama3-csr"]
    assert csr[0].max_elements == 1024 * 128


def _flat_bits_per_element(codec: str) -> float:
    cls = CODECS[codec]
    if cls.unavailable_reason() is not None:
        pytest.skip(f"{codec} unavailable here")
    if codec == "raw":
        x = np.zeros((4096, 4096), np.float16)
        payload = RawCodec(store_dtype="float16", zstd_level=19).encode(x, None, 0).payload  # type: ignore[arg-type]
        return len(payload) * 8 / x.size
    rate = cls.rate_bounds[0] if codec == "hyperprior" else cls.rate_bounds[1]
    coder = cls(source_split=SPLIT) if codec == "hyperprior" else cls()  # type: ignore[call-arg]
    frame = np.full((2048, 1024), 512, np.uint16)
    payload = coder.encode_frame(frame, rate).payload
    return len(payload) * 8 / frame.size


@pytest.mark.parametrize("codec", ["raw", "hevc", "vvenc", "vtm", "hyperprior"])
def test_each_codecs_payload_bound_is_below_its_cheapest_coding(codec: str) -> None:
    """Flat input at the lowest rate is the fewest bits an encoder spends; the bound sits below it."""
    bound = CODECS[codec].min_payload_bits_per_element
    flat = _flat_bits_per_element(codec)
    print(f"{codec}: flat input {flat:.3g} bits per element, bound {bound:.3g} ({flat / bound:.1f}x below)")
    assert 0 < bound < flat


class _CountingModel(BlockingModel):
    """A model whose tail counts its calls (and blocks until released)."""

    def __init__(self, inner: Any, release: threading.Event) -> None:
        super().__init__(inner, release, threading.Semaphore(0))
        self.tails = 0

    def tail(self, features: np.ndarray) -> Any:
        self.tails += 1
        return super().tail(features)


def _engine(settings: CloudSettings, model: Any) -> InferenceEngine:
    return InferenceEngine(settings, CloudMetrics(), logging.getLogger("test-hardening"), lambda s, p: model)


def test_a_request_whose_deadline_passes_in_the_queue_never_starts() -> None:
    release = threading.Event()
    model = _CountingModel(get_split_model(SPLIT, "tiny"), release)
    engine = _engine(CloudSettings(splits=SPLIT, max_concurrency=1), model)
    data, _ = raw_bitstream(SPLIT)

    async def scenario() -> tuple[Any, Any]:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        first = asyncio.create_task(engine.run("t", "first", data, time.perf_counter()))
        assert await asyncio.to_thread(model.entered.acquire, True, 30)
        deadline = time.monotonic() + 0.2
        second = asyncio.create_task(engine.run("t", "second", data, time.perf_counter(), deadline))
        while engine.metrics.queued._value.get() != 1:
            await asyncio.sleep(0.01)
        late = await second  # answered at its deadline, the worker still busy with the first
        release.set()
        return await first, late

    try:
        (ok, no), (outcome, failure) = asyncio.run(scenario())
    finally:
        release.set()
        engine.shutdown()
    assert no is None and ok.request_id == "first"
    assert outcome is None and failure.status.name == "DEADLINE_EXCEEDED" and "not started" in failure.message
    assert model.tails == 1  # the late one never reached the model


def test_the_tail_is_skipped_when_the_deadline_passed_during_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import splitfc.cloud.engine as engine_module

    go = threading.Event()
    real = engine_module.decode_features

    def slow_decode(*args: Any, **kwargs: Any) -> Any:
        go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "decode_features", slow_decode)
    release = threading.Event()
    release.set()
    model = _CountingModel(get_split_model(SPLIT, "tiny"), release)
    engine = _engine(CloudSettings(splits=SPLIT, max_concurrency=1), model)
    data, _ = raw_bitstream(SPLIT)

    async def scenario() -> Any:
        engine.bind_loop(asyncio.get_running_loop())
        engine.load_models()
        deadline = time.monotonic() + 0.3
        task = asyncio.create_task(engine.run("t", "slow", data, time.perf_counter(), deadline))
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        go.set()  # decoding finishes after the deadline
        result = await task
        while engine._slots.free != 1:  # the worker thread has returned
            await asyncio.sleep(0.01)
        return result

    try:
        outcome, failure = asyncio.run(scenario())
    finally:
        go.set()
        engine.shutdown()
    assert outcome is None and failure.status.name == "DEADLINE_EXCEEDED"
    assert model.tails == 0


def test_one_client_cannot_keep_another_waiting_behind_its_queue() -> None:
    """Client A has one request running and three queued; B's request gets the next free worker."""
    release = threading.Event()
    order: list[float] = []

    class Recording(BlockingModel):
        def tail(self, features: np.ndarray) -> Any:
            order.append(float(features.flat[0]))
            return super().tail(features)

    def loader(split: str, preset: str) -> BlockingModel:
        return Recording(get_split_model(split, preset), release, threading.Semaphore(0))

    settings = cloud_settings(splits=SPLIT, max_concurrency=1, max_queue=8, auth_tokens="tok-a,tok-b")
    a_data, _ = raw_bitstream(SPLIT, 0)
    b_data, _ = raw_bitstream(SPLIT, 1)
    try:
        with ServerThread(settings, model_loader=loader) as server:
            s = stub(server)
            a, b = (("authorization", "Bearer tok-a"),), (("authorization", "Bearer tok-b"),)
            calls = [s.Infer.future(svc.InferRequest(request_id="a0", bitstream=a_data), metadata=a, timeout=60)]
            assert wait_until(lambda: len(order) == 1, 30)
            calls += [s.Infer.future(svc.InferRequest(request_id=f"a{i}", bitstream=a_data), metadata=a, timeout=60)
                      for i in (1, 2, 3)]
            assert wait_until(lambda: metric(server, "splitfc_cloud_queued_requests") == 3, 30)
            calls.append(s.Infer.future(svc.InferRequest(request_id="b", bitstream=b_data), metadata=b, timeout=60))
            assert wait_until(lambda: metric(server, "splitfc_cloud_queued_requests") == 4, 30)
            release.set()
            assert sorted(c.result().request_id for c in calls) == ["a0", "a1", "a2", "a3", "b"]
    finally:
        release.set()
    a_mark = float(np.frombuffer(parse_bitstream(a_data).payload[:4], "<f4")[0])
    assert len(order) == 5 and order.count(a_mark) == 4
    assert order[1] != a_mark, order  # B ran second, not after all of A's


def test_a_client_that_fills_the_queue_gives_way() -> None:
    """With the queue full of A's requests, B's request takes the place of A's newest (refused)."""
    release = threading.Event()

    def loader(split: str, preset: str) -> BlockingModel:
        return BlockingModel(get_split_model(split, preset), release, threading.Semaphore(0))

    settings = cloud_settings(splits=SPLIT, max_concurrency=1, max_queue=2, auth_tokens="tok-a,tok-b")
    data, _ = raw_bitstream(SPLIT)
    try:
        with ServerThread(settings, model_loader=loader) as server:
            s = stub(server)
            a, b = (("authorization", "Bearer tok-a"),), (("authorization", "Bearer tok-b"),)
            held = [s.Infer.future(svc.InferRequest(request_id="a0", bitstream=data), metadata=a, timeout=60)]
            assert wait_until(lambda: metric(server, "splitfc_cloud_inflight_requests") == 1, 30)
            held += [s.Infer.future(svc.InferRequest(request_id=f"a{i}", bitstream=data), metadata=a, timeout=60)
                     for i in (1, 2)]
            assert wait_until(lambda: metric(server, "splitfc_cloud_queued_requests") == 2, 30)
            mine = s.Infer.future(svc.InferRequest(request_id="b", bitstream=data), metadata=b, timeout=60)
            with pytest.raises(grpc.RpcError) as info:  # A's newest gives way
                held[2].result()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "another client" in info.value.details()
            release.set()
            assert mine.result().request_id == "b"
            assert [c.result().request_id for c in held[:2]] == ["a0", "a1"]
            assert metric(server, "splitfc_cloud_limit_rejections_total", limit="queue") == 1
    finally:
        release.set()


# -- 4. stalled uploads ------------------------------------------------------------------------------

def test_stalled_uploads_time_out_and_give_back_their_slots() -> None:
    """Two uploads (no deadline of their own to speak of) that stop sending: each ends DEADLINE_EXCEEDED
    after upload_idle_seconds, counted; the client's slots and buffered bytes come back."""
    settings = cloud_settings(splits=SPLIT, max_streams_per_client=2, upload_idle_seconds=1.0)
    hold = threading.Event()
    first = svc.BitstreamChunk(request_id="stall", total_bytes=1 << 20, data=b"\x00" * 1000).SerializeToString()

    def stalled() -> Iterator[bytes]:
        yield first
        hold.wait(60)

    try:
        with ServerThread(settings) as server:
            _, chunked, stream = raw_calls(server.endpoints.grpc_target)
            calls = [chunked.future(stalled(), timeout=20) for _ in range(2)]
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call.result()
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "upload_idle_seconds" in info.value.details()
            idle = stream(_silent(hold), timeout=20)  # a stream that never sends anything
            with pytest.raises(grpc.RpcError) as info:
                list(idle)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert metric(server, "splitfc_cloud_limit_rejections_total", limit="upload_idle") == 3
            assert requests_with(server, "DEADLINE_EXCEEDED") == 3
            assert metric(server, "splitfc_cloud_buffered_upload_bytes") == 0
            assert stub(server).GetInfo(svc.GetInfoRequest(), timeout=10).ready  # slots given back
    finally:
        hold.set()


def _silent(hold: threading.Event) -> Iterator[bytes]:
    hold.wait(60)
    yield from ()


def test_buffered_upload_bytes_have_one_budget_across_streams() -> None:
    settings = cloud_settings(splits=SPLIT, max_bitstream_bytes=2 * MIB, max_buffered_upload_bytes=3 * MIB)
    hold = threading.Event()
    piece = b"\x00" * (512 * 1024)

    def partial() -> Iterator[bytes]:
        yield svc.BitstreamChunk(request_id="held", total_bytes=2 * MIB, data=piece).SerializeToString()
        for _ in range(2):
            yield svc.BitstreamChunk(data=piece).SerializeToString()
        hold.wait(60)

    try:
        with ServerThread(settings) as server:
            _, chunked, _ = raw_calls(server.endpoints.grpc_target)
            held = chunked.future(partial(), timeout=60)
            assert wait_until(lambda: metric(server, "splitfc_cloud_buffered_upload_bytes") == 1.5 * MIB, 30)
            second = svc.BitstreamChunk(request_id="second", total_bytes=2 * MIB, data=piece).SerializeToString()
            with pytest.raises(grpc.RpcError) as info:
                chunked(iter([second]), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_buffered_upload_bytes" in info.value.details()
            assert metric(server, "splitfc_cloud_limit_rejections_total", limit="upload_bytes") == 1
            held.cancel()
            hold.set()
            assert wait_until(lambda: metric(server, "splitfc_cloud_buffered_upload_bytes") == 0, 30)
            data, _ = raw_bitstream(SPLIT)
            from splitfc.edge.client import chunk_messages

            ok = chunked(iter([c.SerializeToString() for c in chunk_messages("ok", data, 8192)]), timeout=60)
            assert ok.result.task == "cls"
    finally:
        hold.set()


def test_settings_that_cannot_work_are_refused_at_start_up() -> None:
    from splitfc.common.transport import MESSAGE_HEADROOM

    with pytest.raises(ValueError, match="max_buffered_upload_bytes"):
        CloudSettings(max_bitstream_bytes=64 * MIB, max_buffered_upload_bytes=32 * MIB)
    with pytest.raises(ValueError, match=r"upload_idle_seconds|must be > 0"):
        CloudSettings(upload_idle_seconds=0)
    with pytest.raises(ValueError, match="max_message_bytes=100 cannot work"):
        CloudSettings(max_message_bytes=100)
    with pytest.raises(ValueError, match="chunk_bytes=4194304 cannot work"):
        EdgeSettings(max_message_bytes=4 * MIB, chunk_bytes=4 * MIB)
    assert EdgeSettings(max_message_bytes=4 * MIB).chunk_bytes == 4 * MIB - MESSAGE_HEADROOM


# -- 5. InferStream always ends with a status --------------------------------------------------------

def test_infer_stream_answers_a_malformed_message_and_ends(cloud: ServerThread) -> None:
    _, _, stream = raw_calls(cloud.endpoints.grpc_target)
    data, _ = raw_bitstream(SPLIT)
    before = metric(cloud, "splitfc_cloud_decode_errors_total", split="unknown", codec="unknown", reason="envelope")
    messages = [svc.InferRequest(request_id="good", bitstream=data).SerializeToString(), b"\xff\xff\xff",
                svc.InferRequest(request_id="after", bitstream=data).SerializeToString()]
    call = stream(iter(messages), timeout=30)
    responses = list(call)  # ends: no DEADLINE_EXCEEDED from a hang
    assert call.code() == grpc.StatusCode.OK
    by_id = {r.request_id: r for r in responses}
    assert len(responses) == 3 and by_id["good"].result.task == by_id["after"].result.task == "cls"
    bad = by_id[""].error
    assert bad.code_name == "INVALID_ARGUMENT" and "not a splitfc.v1.InferRequest" in bad.message
    assert metric(cloud, "splitfc_cloud_decode_errors_total", split="unknown", codec="unknown",
                  reason="envelope") == before + 1


# -- 6. client strings are cut and quoted ------------------------------------------------------------

def test_a_long_split_name_gets_a_short_invalid_argument(cloud: ServerThread) -> None:
    msg = parse_bitstream(raw_bitstream(SPLIT)[0])
    msg.split = "x" * 20_000
    with pytest.raises(grpc.RpcError) as info:
        stub(cloud).Infer(svc.InferRequest(bitstream=msg.SerializeToString()), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert len(details) < 400 and "unknown split 'xxxx" in details and "(20000 chars)" in details


def test_long_codec_extras_are_refused_and_quoted() -> None:
    msg = parse_bitstream(raw_bitstream(SPLIT)[0])
    msg.codec.extra["store_dtype"] = "\n" + "y" * 5000
    with pytest.raises(HeaderError) as info:
        validate_bitstream(msg)
    assert len(str(info.value)) < 400 and "'\\nyyy" in str(info.value)


def test_a_huge_request_id_is_refused_not_echoed_or_logged_whole(cloud: ServerThread, cloud_log: _Lines) -> None:
    data, _ = raw_bitstream(SPLIT)
    with pytest.raises(grpc.RpcError) as info:
        stub(cloud).Infer(svc.InferRequest(request_id="r" * (4 * MIB), bitstream=data), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id of 4194304 characters is over the limit of 128" in info.value.details()
    assert len(info.value.details()) < 400
    _, chunked, stream = raw_calls(cloud.endpoints.grpc_target)
    first = svc.BitstreamChunk(request_id="c" * 5000, total_bytes=len(data), data=data[:100]).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:  # refused on the first chunk, before the upload
        chunked(iter([first]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit of 128" in info.value.details()
    answers = list(stream(iter([svc.InferRequest(request_id="s" * 5000, bitstream=data).SerializeToString()]),
                          timeout=30))
    assert answers[0].request_id == "" and answers[0].error.code_name == "INVALID_ARGUMENT"
    ids = [f["request_id"] for f in cloud_log.fields if str(f.get("request_id", "")).startswith(("rrr", "sss", "ccc"))]
    assert len(ids) == 3 and all(len(i) < 200 for i in ids), [len(i) for i in ids]
    assert all(len(f.get("error", "")) < 400 for f in cloud_log.fields)


# -- 7. chunks fit the message limit -----------------------------------------------------------------

def _dpt_bitstream() -> bytes:
    return raw_bitstream("dinov2-dpt")[0]  # 331,851 bytes


@pytest.mark.parametrize("edge_limit", [256 * 1024, 16 * MIB], ids=["equal-limits", "server-smaller"])
def test_a_bitstream_over_the_message_limit_goes_through(edge_limit: int, tmp_path: Any) -> None:
    """Both sides at 256 KiB (the docs' advice: keep them equal) with the default chunk size, and an edge
    at 16 MiB against a 256 KiB server (it reads the server's limit from GetInfo): a 332 KB bitstream
    arrives (it used to be sent as one message, or chunks, over the limit)."""
    data = _dpt_bitstream()
    limit = 256 * 1024
    with ServerThread(cloud_settings(splits="dinov2-dpt", max_message_bytes=limit)) as server:
        async def send() -> Any:
            settings = EdgeSettings(max_message_bytes=edge_limit, cache_dir=tmp_path)
            async with EdgeClient(server.endpoints.grpc_target, settings) as client:
                return await client.infer("big", data, deadline_s=60)

        result = asyncio.run(send())
    assert result.code == grpc.StatusCode.OK, result.details
    assert result.chunked and result.response.result.task == "dpt"


# -- 8. small ones -----------------------------------------------------------------------------------

def test_an_unparseable_envelope_is_invalid_argument_counted_and_logged(
    cloud: ServerThread, cloud_log: _Lines,
) -> None:
    infer, chunked, _ = raw_calls(cloud.endpoints.grpc_target)
    before = requests_with(cloud, "INVALID_ARGUMENT")
    logged = sum("protobuf parse failed" in f.get("error", "") for f in cloud_log.fields)
    for call in (lambda: infer(b"\xff\xff\xff", timeout=10), lambda: chunked(iter([b"\xff\xff"]), timeout=10)):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "protobuf parse failed" in info.value.details()
    assert requests_with(cloud, "INVALID_ARGUMENT") == before + 2
    assert sum("protobuf parse failed" in f.get("error", "") for f in cloud_log.fields) == logged + 2


def test_a_cancelled_upload_is_counted_cancelled(cloud: ServerThread) -> None:
    _, chunked, _ = raw_calls(cloud.endpoints.grpc_target)
    sent, hold = threading.Event(), threading.Event()

    def upload() -> Iterator[bytes]:
        yield svc.BitstreamChunk(request_id="gone", total_bytes=100_000, data=b"\x00" * 1000).SerializeToString()
        sent.set()
        hold.wait(60)

    before = requests_with(cloud, "CANCELLED"), requests_with(cloud, "INVALID_ARGUMENT")
    call = chunked.future(upload(), timeout=60)
    try:
        assert sent.wait(30)
        assert wait_until(lambda: metric(cloud, "splitfc_cloud_buffered_upload_bytes") == 1000, 30)
        call.cancel()  # the server is waiting for the next chunk
        assert wait_until(lambda: requests_with(cloud, "CANCELLED") == before[0] + 1, 30)
    finally:
        hold.set()
    streamed = [0]

    def flowing() -> Iterator[bytes]:  # cancelled while chunks are still arriving (used to be counted nowhere)
        yield svc.BitstreamChunk(request_id="flow", total_bytes=1 << 28, data=b"\x00" * 65536).SerializeToString()
        while True:
            streamed[0] += 1
            yield svc.BitstreamChunk(data=b"\x00" * 65536).SerializeToString()

    call = chunked.future(flowing(), timeout=60)
    assert wait_until(lambda: streamed[0] >= 64, 30)
    call.cancel()
    assert wait_until(lambda: requests_with(cloud, "CANCELLED") == before[0] + 2, 30)
    assert requests_with(cloud, "INVALID_ARGUMENT") == before[1]


@pytest.mark.parametrize("rate", [-1, (1 << 31) - 1])
def test_rates_outside_the_codecs_bounds_are_refused_on_decode(cloud: ServerThread, rate: int) -> None:
    msg = parse_bitstream(raw_bitstream(SPLIT)[0])
    msg.codec.rate = rate
    with pytest.raises(HeaderError, match=f"takes none in \\[0, 0\\], got {rate}"):
        decode_features(msg)
    with pytest.raises(grpc.RpcError) as info:
        stub(cloud).Infer(svc.InferRequest(bitstream=msg.SerializeToString()), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"got {rate}" in info.value.details()
    if CODECS["hevc"].unavailable_reason() is None:
        coded = encode_features(np.zeros((65, 128), np.float32), SPLIT, "hevc", 32)
        coded.codec.rate = rate
        with pytest.raises(HeaderError, match=f"qp in \\[0, 51\\], got {rate}"):
            decode_features(coded)


def test_external_codec_errors_carry_no_memory_addresses() -> None:
    from splitfc.common.codecs._external import run_program

    script = "import sys; sys.stderr.write('[hevc @ 0x55d5c1a2b3c0] Invalid NAL unit 0x7ffd1234abcd\\n'); sys.exit(2)"
    with pytest.raises(CodecError) as info:
        run_program([sys.executable, "-c", script], "hevc decode")
    assert str(info.value) == "hevc decode failed (exit 2): [hevc] Invalid NAL unit 0x?"
    if CODECS["hevc"].unavailable_reason() is None:
        msg = encode_features(np.zeros((65, 128), np.float32), SPLIT, "hevc", 32)
        msg.payload = bytes(range(256)) * 4
        msg.payload_crc32 = zlib.crc32(msg.payload)
        with pytest.raises(SplitfcError) as info:
            decode_features(msg)
        assert "0x" not in str(info.value).replace("0x?", "")


def test_external_decoders_stop_when_asked() -> None:
    from splitfc.common.codecs._external import run_program, stop_when

    asked = threading.Event()
    threading.Timer(0.2, asked.set).start()
    with stop_when(lambda: "deadline exceeded" if asked.is_set() else None), pytest.raises(CodecError) as info:
        run_program([sys.executable, "-c", "import time; time.sleep(60)"], "slow decode", timeout_s=60)
    assert str(info.value) == "slow decode stopped: deadline exceeded"


def test_error_messages_are_bounded() -> None:
    from splitfc.cloud.errors import MAX_MESSAGE_CHARS, RequestFailed, Status

    assert len(RequestFailed(Status.INTERNAL, "z" * 100_000).message) <= MAX_MESSAGE_CHARS + 3


def test_a_streamed_zstd_frame_without_declared_size_decodes() -> None:
    """Outside review: a third-party encoder streaming the payload (no declared size, 2-8 MiB window) was
    refused as "corrupt" by a window cap sized from the tensor alone."""
    import zstandard

    from splitfc.common.codecs.raw import zstd_decompress_bounded

    data = np.random.default_rng(3).standard_normal(20_000).astype("<f4").tobytes()
    for level in (1, 3, 19):
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=False)
        chunker = cctx.compressobj()
        frame = chunker.compress(data) + chunker.flush()
        assert zstandard.frame_content_size(frame) == -1
        assert zstd_decompress_bounded(frame, len(data)) == data


def test_raw_takes_rate_zero_only() -> None:
    with pytest.raises(HeaderError, match=r"in \[0, 0\], got 5"):
        RawCodec.check_rate(5)
