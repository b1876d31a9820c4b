"""The cloud over a real loopback gRPC connection: every split end to end, bad input, limits, health."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from _serving import ALL_SPLITS, BlockingModel, ServerThread, cloud_settings, raw_bitstream, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from splitfc.common.bitstream import FORMAT_VERSION, encode_features, header_bytes, parse_bitstream
from splitfc.common.integrity import bind_digest, content_digest
from splitfc.common.models import get_split_model
from splitfc.common.specs import SPLITS
from splitfc.common.wire import task_result_from_proto, top_k
from splitfc.edge.client import chunk_messages
from splitfc.v1 import service_pb2 as svc
from splitfc.v1 import service_pb2_grpc as svc_grpc

SMALL_MESSAGE = 64 * 1024


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    """One server with every split of the tiny preset."""
    with ServerThread(cloud_settings()) as server:
        yield server


@pytest.fixture(scope="module")
def small_cloud() -> Iterator[ServerThread]:
    """dinov2-dpt only, with a 64 KiB message limit and a 1 MiB bitstream limit."""
    settings = cloud_settings(splits="dinov2-dpt", max_message_bytes=SMALL_MESSAGE, max_bitstream_bytes=1 << 20)
    with ServerThread(settings) as server:
        yield server


def stub_for(server: ServerThread, max_bytes: int = 64 << 20) -> svc_grpc.SplitInferenceStub:
    channel = grpc.insecure_channel(
        server.endpoints.grpc_target,
        options=[("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)],
    )
    return svc_grpc.SplitInferenceStub(channel)


def metric(server: ServerThread, name: str, **labels: str) -> float:
    return server.server.metrics.value(name, labels)


def assert_matches_unsplit(split: str, result: svc.TaskResult, ref) -> None:
    """The returned task output equals the unsplit model's output on the same input."""
    out = task_result_from_proto(result)
    task = SPLITS[split].task
    assert result.task == task == ref.task
    if task == "cls":
        ids, probs = top_k(ref.probs)
        assert out.label == ref.label == ids[0]
        assert list(result.classification.top5_ids) == ids
        np.testing.assert_allclose(result.classification.top5_probs, probs, rtol=1e-4, atol=1e-6)
        assert result.classification.num_classes == ref.probs.size
    elif task == "seg":
        assert out.mask.shape == ref.mask.shape
        assert np.mean(out.mask == ref.mask) >= 0.999
    elif task == "dpt":
        np.testing.assert_allclose(out.depth, ref.depth, rtol=1e-4, atol=1e-4)
    elif task == "csr":
        assert out.label == ref.label
        assert result.answer.letter == ref.choices[ref.label]
        np.testing.assert_allclose(out.probs, ref.probs, rtol=1e-4, atol=1e-6)
    elif task == "tti":
        assert out.image.shape == ref.image.shape and out.image.dtype == np.uint8
        assert np.abs(out.image.astype(int) - ref.image.astype(int)).max() <= 1
    else:
        raise AssertionError(task)


# -- end to end, every split --------------------------------------------------------------------

@pytest.mark.parametrize("split", ALL_SPLITS)
def test_infer_matches_unsplit_model(cloud: ServerThread, split: str) -> None:
    stub = stub_for(cloud)
    data, sample = raw_bitstream(split)
    resp = stub.Infer(svc.InferRequest(request_id=f"e2e-{split}", bitstream=data), timeout=120)
    assert resp.request_id == f"e2e-{split}" and resp.split == split
    assert not resp.HasField("error")
    ref = get_split_model(split, "tiny").forward_unsplit(sample.inputs)
    assert_matches_unsplit(split, resp.result, ref)
    msg = parse_bitstream(data)
    points = int(np.prod(msg.tensors[0].shape))
    assert resp.rate.feature_points == points
    assert resp.rate.payload_bytes == 4 * points and resp.rate.bpfp == 32.0
    assert resp.rate.bitstream_bytes == len(data)
    t = resp.timing
    assert t.decode_ms > 0 and t.tail_ms > 0 and t.queue_ms >= 0
    assert t.total_ms >= t.decode_ms + t.tail_ms
    assert metric(cloud, "splitfc_cloud_requests_total", split=split, codec="raw", status="OK") >= 1
    assert metric(cloud, "splitfc_cloud_stage_seconds_count", split=split, stage="tail") >= 1


def test_typed_bitstream_message_is_accepted(cloud: ServerThread) -> None:
    data, sample = raw_bitstream("dinov2-cls")
    resp = stub_for(cloud).Infer(svc.InferRequest(request_id="typed", bitstream_message=parse_bitstream(data)))
    ref = get_split_model("dinov2-cls", "tiny").forward_unsplit(sample.inputs)
    assert_matches_unsplit("dinov2-cls", resp.result, ref)


def test_infer_stream_answers_each_request_by_id(cloud: ServerThread) -> None:
    good = {f"s{i}-{split}": raw_bitstream(split, i)[0] for i in range(2) for split in ("dinov2-cls", "llama3-csr")}
    requests = [svc.InferRequest(request_id=rid, bitstream=data) for rid, data in good.items()]
    requests.insert(2, svc.InferRequest(request_id="bad", bitstream=b"\xff" * 40))
    responses = list(stub_for(cloud).InferStream(iter(requests), timeout=120))
    assert sorted(r.request_id for r in responses) == sorted([*good, "bad"])
    by_id = {r.request_id: r for r in responses}
    assert by_id["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id["bad"].error.code_name == "INVALID_ARGUMENT" and by_id["bad"].error.message
    for rid in good:
        assert not by_id[rid].HasField("error")
        assert by_id[rid].result.task in ("cls", "csr")
    same = stub_for(cloud).Infer(svc.InferRequest(bitstream=good["s1-dinov2-cls"]))
    assert same.result == by_id["s1-dinov2-cls"].result


def test_chunked_upload_equals_unary(cloud: ServerThread, small_cloud: ServerThread) -> None:
    data, _ = raw_bitstream("dinov2-dpt")
    assert len(data) > 4 * SMALL_MESSAGE
    chunks = chunk_messages("chunked", data, SMALL_MESSAGE // 2)
    assert len(chunks) > 8 and chunks[0].total_bytes == len(data)
    resp = stub_for(small_cloud).InferChunked(iter(chunks), timeout=120)
    unary = stub_for(cloud).Infer(svc.InferRequest(bitstream=data), timeout=120)
    assert resp.request_id == "chunked"
    assert resp.result == unary.result
    assert resp.rate.bitstream_bytes == len(data)


# -- bad input ------------------------------------------------------------------------------------

def _msg(split: str = "dinov2-cls"):
    data, _ = raw_bitstream(split)
    return parse_bitstream(data)


def _crc_mismatch() -> bytes:
    m = _msg()
    m.payload_crc32 ^= 1
    return m.SerializeToString()


def _random_payload() -> bytes:
    m = _msg()
    m.payload = np.random.default_rng(7).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    m.payload_crc32 = zlib.crc32(m.payload)
    return m.SerializeToString()


def _shape_off_by_one() -> bytes:
    m = _msg()
    m.tensors[0].shape[0] -= 1
    return m.SerializeToString()


def _wrong_rank() -> bytes:
    m = _msg()
    m.tensors[0].shape.insert(0, 1)
    return m.SerializeToString()


def _huge_shape_tiny_payload() -> bytes:
    m = _msg()
    del m.tensors[0].shape[:]
    m.tensors[0].shape.extend([1 << 30, 1 << 20])
    m.payload = b"\x00" * 8
    m.payload_crc32 = zlib.crc32(m.payload)
    return m.SerializeToString()


def _huge_token_count_tiny_payload() -> bytes:
    """llama3-csr takes any token count: only the element limit stops this one."""
    m = _msg("llama3-csr")
    m.tensors[0].shape[0] = 1 << 30
    m.payload = b"\x00" * 8
    m.payload_crc32 = zlib.crc32(m.payload)
    return m.SerializeToString()


def _unknown_codec() -> bytes:
    m = _msg()
    m.codec.codec = "no-such-codec"
    return m.SerializeToString()


def _unknown_split() -> bytes:
    m = _msg()
    m.split = "resnet-cls"
    return m.SerializeToString()


def _future_version() -> bytes:
    m = _msg()
    m.format_version = 99
    return m.SerializeToString()


def _nan_features(split: str = "dinov2-cls") -> bytes:
    """A hostile edge: a NaN in a raw payload with a consistent CRC and digest."""
    m = _msg(split)
    values = np.frombuffer(m.payload, dtype="<f4").copy()
    values[len(values) // 2] = np.nan
    m.payload = values.tobytes()
    m.payload_crc32 = zlib.crc32(m.payload)
    m.decoded_digest = bind_digest(content_digest(m.payload), header_bytes(m))
    return m.SerializeToString()


def _digest_mismatch() -> bytes:
    m = _msg()
    m.decoded_digest = bytes(8)
    return m.SerializeToString()


def _version_in_client_extra() -> bytes:
    """A client-supplied string containing "version" must not choose the "version" label."""
    m = _msg()
    m.codec.extra["compression"] = "version-9"
    return m.SerializeToString()


BAD_INPUTS = {
    # name: (bitstream, status, message fragment, decode-error reason)
    "random_bytes": (lambda: np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                     "INVALID_ARGUMENT", "", None),
    "random_payload": (_random_payload, "INVALID_ARGUMENT", "raw payload has 1000 bytes", "decode"),
    "crc_mismatch": (_crc_mismatch, "INVALID_ARGUMENT", "CRC32 mismatch", "crc"),
    "shape_off_by_one": (_shape_off_by_one, "INVALID_ARGUMENT", "does not fit split dinov2-cls", "shape"),
    "wrong_rank": (_wrong_rank, "INVALID_ARGUMENT", "expects a 2-d tensor", "shape"),
    "huge_shape_tiny_payload": (_huge_shape_tiny_payload, "INVALID_ARGUMENT", "does not fit split dinov2-cls",
                                "shape"),
    "huge_token_count_tiny_payload": (_huge_token_count_tiny_payload, "INVALID_ARGUMENT", "over the limit",
                                      "too_many_elements"),
    "unknown_codec": (_unknown_codec, "INVALID_ARGUMENT", "unknown codec 'no-such-codec'", "unknown_codec"),
    "unknown_split": (_unknown_split, "INVALID_ARGUMENT", "unknown split 'resnet-cls'", "unknown_name"),
    "future_version": (_future_version, "INVALID_ARGUMENT", "unsupported bitstream format version 99", "version"),
    "nan_features": (_nan_features, "INVALID_ARGUMENT", "NaN or infinite", "non_finite"),
    "digest_mismatch": (_digest_mismatch, "INVALID_ARGUMENT", "does not match the encoder's digest", "integrity"),
    "version_in_client_extra": (_version_in_client_extra, "INVALID_ARGUMENT", "unknown compression", "decode"),
    "empty_request": (lambda: None, "INVALID_ARGUMENT", "carries no bitstream", None),
}


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_non_finite_features_are_refused_on_every_split(cloud: ServerThread, split: str) -> None:
    """Finding 3 of the trust issue: NaN features were answered OK (NaN probabilities, a flat image)."""
    errors = "splitfc_cloud_decode_errors_total"
    before = metric(cloud, errors, split=split, codec="raw", reason="non_finite")
    with pytest.raises(grpc.RpcError) as info:
        stub_for(cloud).Infer(svc.InferRequest(bitstream=_nan_features(split)), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN or infinite" in info.value.details()
    assert metric(cloud, errors, split=split, codec="raw", reason="non_finite") == before + 1
    assert metric(cloud, errors, split=split, codec="raw", reason="version") == 0


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_answered_counted_and_survived(cloud: ServerThread, case: str) -> None:
    make, status, fragment, reason = BAD_INPUTS[case]
    data = make()
    stub = stub_for(cloud)
    total = "splitfc_cloud_requests_total"
    before = sum(
        metric(cloud, total, split=s, codec=c, status=status)
        for s in (*ALL_SPLITS, "unknown") for c in ("raw", "unknown")
    )
    split = "llama3-csr" if "token" in case else "dinov2-cls"
    errors = "splitfc_cloud_decode_errors_total"
    before_reason = metric(cloud, errors, split=split, codec="raw", reason=reason or "")
    request = svc.InferRequest(request_id=f"bad-{case}") if data is None else svc.InferRequest(
        request_id=f"bad-{case}", bitstream=data)
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request, timeout=30)
    assert info.value.code().name == status
    assert fragment in info.value.details() and info.value.details()
    if case.startswith("huge"):
        assert time.perf_counter() - t0 < 5  # rejected from the header, nothing allocated
    after = sum(
        metric(cloud, total, split=s, codec=c, status=status)
        for s in (*ALL_SPLITS, "unknown") for c in ("raw", "unknown")
    )
    assert after == before + 1
    if reason is not None and case not in ("unknown_codec", "unknown_split"):
        assert metric(cloud, errors, split=split, codec="raw", reason=reason) == before_reason + 1
    good, _ = raw_bitstream("dinov2-cls")
    assert stub.Infer(svc.InferRequest(bitstream=good), timeout=60).result.task == "cls"


def test_unknown_names_are_counted_under_unknown_labels(cloud: ServerThread) -> None:
    stub = stub_for(cloud)
    name = "splitfc_cloud_decode_errors_total"
    before = metric(cloud, name, split="dinov2-cls", codec="unknown", reason="unknown_codec")
    with pytest.raises(grpc.RpcError):
        stub.Infer(svc.InferRequest(bitstream=_unknown_codec()))
    assert metric(cloud, name, split="dinov2-cls", codec="unknown", reason="unknown_codec") == before + 1
    assert "no-such-codec" not in cloud.server.metrics.exposition().decode()


def test_oversized_message_is_rejected_and_counted(small_cloud: ServerThread) -> None:
    stub = stub_for(small_cloud)
    labels = {"split": "unknown", "codec": "unknown", "status": "RESOURCE_EXHAUSTED"}
    before = metric(small_cloud, "splitfc_cloud_requests_total", **labels)
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(svc.InferRequest(request_id="big", bitstream=b"\x00" * (2 * SMALL_MESSAGE)), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    assert wait_until(lambda: metric(small_cloud, "splitfc_cloud_requests_total", **labels) == before + 1)
    assert metric(small_cloud, "splitfc_cloud_decode_errors_total", split="unknown", codec="unknown",
                  reason="oversized") >= 1
    # A chunked upload announcing more than max_bitstream_bytes is refused before it is read.
    chunk = svc.BitstreamChunk(request_id="huge", total_bytes=(1 << 20) + 1, data=b"\x00" * 10)
    with pytest.raises(grpc.RpcError) as info:
        stub.InferChunked(iter([chunk]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the limit of 1048576" in info.value.details()
    assert metric(small_cloud, "splitfc_cloud_requests_total", **labels) == before + 2
    # Chunks that do not add up to the announced size.
    data, _ = raw_bitstream("dinov2-dpt")
    chunks = chunk_messages("short", data, SMALL_MESSAGE // 2)[:-1]
    with pytest.raises(grpc.RpcError) as info:
        stub.InferChunked(iter(chunks), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ended after" in info.value.details()
    good = stub.InferChunked(iter(chunk_messages("ok", data, SMALL_MESSAGE // 2)), timeout=60)
    assert good.result.task == "dpt"


# -- limits, deadlines, draining ---------------------------------------------------------------------

@pytest.fixture()
def blocking_cloud() -> Iterator[tuple[ServerThread, threading.Event, threading.Semaphore]]:
    """dinov2-cls whose tail blocks until released; one worker, a queue of one."""
    release, entered = threading.Event(), threading.Semaphore(0)

    def loader(split: str, preset: str) -> BlockingModel:
        return BlockingModel(get_split_model(split, preset), release, entered)

    server = ServerThread(cloud_settings(splits="dinov2-cls", max_concurrency=1, max_queue=1), model_loader=loader)
    server.start()
    try:
        yield server, release, entered
    finally:
        release.set()
        server.stop()


def test_queue_bound_deadline_and_recovery(blocking_cloud) -> None:
    server, release, entered = blocking_cloud
    stub = stub_for(server)
    data, _ = raw_bitstream("dinov2-cls")
    req = svc.InferRequest(bitstream=data)
    total = "splitfc_cloud_requests_total"
    labels = {"split": "unknown", "codec": "unknown"}
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(stub.Infer, svc.InferRequest(request_id="first", bitstream=data), timeout=60)
        assert entered.acquire(timeout=30)  # the only worker is busy
        # Waits in the queue, then its deadline passes.
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(req, timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: metric(server, total, status="DEADLINE_EXCEEDED", **labels) == 1)
        # One more fills the queue of one; the next is refused at once.
        queued = pool.submit(stub.Infer, svc.InferRequest(request_id="queued", bitstream=data), timeout=60)
        assert wait_until(lambda: server.server.metrics.value("splitfc_cloud_queued_requests") == 1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Infer(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server busy" in info.value.details()
        assert metric(server, total, status="RESOURCE_EXHAUSTED", **labels) == 1
        assert server.server.metrics.value("splitfc_cloud_inflight_requests") == 2
        release.set()
        assert first.result().request_id == "first"
        assert queued.result().request_id == "queued"
    assert metric(server, total, split="dinov2-cls", codec="raw", status="OK") == 2
    assert stub.Infer(req, timeout=30).result.task == "cls"


def test_stop_drains_in_flight_requests(blocking_cloud) -> None:
    server, release, entered = blocking_cloud
    stub = stub_for(server)
    data, _ = raw_bitstream("dinov2-cls")
    with ThreadPoolExecutor(2) as pool:
        inflight = pool.submit(stub.Infer, svc.InferRequest(request_id="drain", bitstream=data), timeout=60)
        assert entered.acquire(timeout=30)
        stopping = pool.submit(server.stop, 20.0)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.endpoints.grpc_target))
        assert wait_until(lambda: _health(health) != health_pb2.HealthCheckResponse.SERVING)
        time.sleep(0.2)
        release.set()
        assert inflight.result(30).request_id == "drain"
        stopping.result(30)
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(svc.InferRequest(bitstream=data), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _health(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError:
        return -1


def test_not_ready_until_models_load() -> None:
    gate = threading.Event()

    def slow_loader(split: str, preset: str):
        gate.wait(60)
        return get_split_model(split, preset)

    server = ServerThread(cloud_settings(splits="dinov2-cls"), model_loader=slow_loader)
    ep = server.start(wait_ready=False)
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(ep.grpc_target))
        assert _health(health) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert httpx.get(f"{ep.http_url}/readyz").status_code == 503
        assert httpx.get(f"{ep.http_url}/healthz").status_code == 200
        data, _ = raw_bitstream("dinov2-cls")
        with pytest.raises(grpc.RpcError) as info:
            stub_for(server).Infer(svc.InferRequest(bitstream=data), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
        gate.set()
        server.wait_ready(60)
        assert _health(health) == health_pb2.HealthCheckResponse.SERVING
        assert _health(health, "splitfc.v1.SplitInference") == health_pb2.HealthCheckResponse.SERVING
        assert httpx.get(f"{ep.http_url}/readyz").json()["ready"] is True
    finally:
        gate.set()
        server.stop()


# -- health, reflection, info, HTTP -------------------------------------------------------------------

def test_health_reflection_and_info(cloud: ServerThread) -> None:
    channel = grpc.insecure_channel(cloud.endpoints.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    assert _health(health) == health_pb2.HealthCheckResponse.SERVING
    assert _health(health, "splitfc.v1.SplitInference") == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"splitfc.v1.SplitInference", "grpc.health.v1.Health"} <= names
    info = stub_for(cloud).GetInfo(svc.GetInfoRequest())
    assert info.ready and info.preset == "tiny"
    assert [s.split for s in info.splits] == list(ALL_SPLITS)
    cls = next(s for s in info.splits if s.split == "dinov2-cls")
    assert list(cls.feature_shape) == list(get_split_model("dinov2-cls", "tiny").expected_shape())
    assert cls.model == get_split_model("dinov2-cls", "tiny").model_name != ""
    csr = next(s for s in info.splits if s.split == "llama3-csr")
    assert csr.feature_shape[0] == 0  # variable token count
    assert {c.name for c in info.codecs} >= {"raw"}
    assert info.limits.max_message_bytes == cloud.server.settings.max_message_bytes
    assert info.bitstream_format_version == FORMAT_VERSION == 2


def test_http_endpoints(cloud: ServerThread) -> None:
    url = cloud.endpoints.http_url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and ready.json()["loaded"] == sorted(ALL_SPLITS)
    info = httpx.get(f"{url}/v1/info").json()
    assert [s["split"] for s in info["splits"]] == list(ALL_SPLITS)
    assert info["limits"]["max_concurrency"] == 2 and info["bitstream_format_version"] == FORMAT_VERSION == 2
    data, _ = raw_bitstream("dinov2-cls")
    stub_for(cloud).Infer(svc.InferRequest(bitstream=data))
    text = httpx.get(f"{url}/metrics").text
    for name in (
        "splitfc_cloud_requests_total", "splitfc_cloud_stage_seconds_bucket", "splitfc_cloud_bitstream_bytes_bucket",
        "splitfc_cloud_bpfp_bucket", "splitfc_cloud_inflight_requests", "splitfc_cloud_decode_errors_total",
        "splitfc_cloud_payload_bytes_total", "splitfc_cloud_ready 1.0",
    ):
        assert name in text
    assert 'splitfc_cloud_stage_seconds_count{split="dinov2-cls",stage="decode"}' in text


def test_vvenc_bitstream_over_the_wire(cloud: ServerThread) -> None:
    from splitfc.common.codecs import CODECS

    if CODECS["vvenc"].unavailable_reason() is not None:
        pytest.skip(CODECS["vvenc"].unavailable_reason())
    _, sample = raw_bitstream("dinov2-cls")
    features = get_split_model("dinov2-cls", "tiny").head(sample.inputs)
    msg = encode_features(features, "dinov2-cls", "vvenc", 32)
    resp = stub_for(cloud).Infer(svc.InferRequest(bitstream=msg.SerializeToString()), timeout=60)
    assert resp.rate.payload_bytes == len(msg.payload)
    assert resp.rate.bpfp == pytest.approx(len(msg.payload) * 8 / features.size)
    assert metric(cloud, "splitfc_cloud_requests_total", split="dinov2-cls", codec="vvenc", status="OK") >= 1


def test_serve_exits_with_the_error_when_models_cannot_load() -> None:
    import asyncio

    from splitfc.cloud.server import CloudServer
    from splitfc.common.errors import SplitfcError

    def broken(split: str, preset: str):
        raise FileNotFoundError("checkpoint folder not found: /nowhere")

    server = CloudServer(cloud_settings(splits="dinov2-cls"), model_loader=broken)
    with pytest.raises(SplitfcError, match="could not load its models: FileNotFoundError: checkpoint folder"):
        asyncio.run(asyncio.wait_for(server.serve(), 60))
    assert server.engine.ready is False
