"""The edge: reports, concurrency, retries, deadlines, chunking, joined logs, and the CLI pieces."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from _serving import BlockingModel, ServerThread, cloud_settings

from splitfc.cli import main
from splitfc.common.errors import SplitfcError
from splitfc.common.jsonlog import json_logger
from splitfc.common.models import get_split_model, tiny_samples
from splitfc.edge.client import EdgeClient
from splitfc.edge.runner import EdgeRunConfig, ReferenceCache, exit_code, format_summary, percentiles, run_edge
from splitfc.edge.settings import EdgeSettings


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    with ServerThread(cloud_settings(splits="dinov2-cls,dinov2-dpt,llama3-csr")) as server:
        yield server


def edge_settings(tmp_path: Path, **kw) -> EdgeSettings:
    return EdgeSettings(cache_dir=tmp_path / "refs", **kw)


def run(config: EdgeRunConfig, settings: EdgeSettings, **kw) -> dict:
    return asyncio.run(run_edge(config, settings, **kw))


def test_percentiles() -> None:
    p = percentiles([float(v) for v in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["max"] == 100.0
    assert percentiles([])["p95"] is None


def test_32_concurrent_requests_without_errors(cloud: ServerThread, tmp_path: Path) -> None:
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-cls", codec="raw", samples=32,
                           concurrency=32)
    report = run(config, edge_settings(tmp_path))
    s = report["summary"]
    assert s["requests"] == s["ok"] == 32 and s["errors"] == 0 and exit_code(report) == 0
    assert len({r["request_id"] for r in report["requests"]}) == 32
    for stage in ("head", "encode", "network", "server", "total"):
        lat = s["latency_ms"][stage]
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert s["latency_ms"]["total"]["p99"] > 0
    assert s["bpfp_mean"] == 32.0
    shape = get_split_model("dinov2-cls", "tiny").expected_shape()
    assert s["payload_bytes_mean"] == 4 * int(np.prod(shape))
    assert s["wire_bytes_mean"] > s["payload_bytes_mean"]
    # raw is lossless: the served outputs agree with the unsplit model on every sample
    assert s["metric"]["metric"] == "top-1 accuracy" and s["metric"]["value"] == 100.0
    assert s["metric"]["reference"] == "uncompressed pipeline"
    assert cloud.server.metrics.value(
        "splitfc_cloud_requests_total", {"split": "dinov2-cls", "codec": "raw", "status": "OK"}) >= 32
    text = format_summary(report)
    assert "p99" in text and "errors 0" in text


def test_ground_truth_is_preferred_and_agreement_is_reported(cloud: ServerThread, tmp_path: Path) -> None:
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="llama3-csr", codec="raw", samples=6,
                           concurrency=3)
    report = run(config, edge_settings(tmp_path))
    s = report["summary"]
    samples = tiny_samples("llama3-csr", 6)
    predicted = [r["prediction"]["label"] for r in report["requests"]]
    expected = 100.0 * np.mean([p == smp.target for p, smp in zip(predicted, samples, strict=True)])
    assert s["metric"]["reference"] == "ground truth" and s["metric"]["value"] == pytest.approx(expected)
    assert s["agreement"]["reference"] == "uncompressed pipeline" and s["agreement"]["value"] == 100.0


def test_reference_cache_is_reused(cloud: ServerThread, tmp_path: Path) -> None:
    settings = edge_settings(tmp_path)
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-cls", codec="raw", samples=2)
    run(config, settings)
    cache = ReferenceCache(settings.cache_dir, "tiny", "dinov2-cls")
    files = sorted(cache.dir.glob("*.npz"))
    assert len(files) == 2
    sample = tiny_samples("dinov2-cls", 1)[0]
    (mine,) = [f for f in files if f.stem.startswith(f"{sample.id}-")]
    digest = mine.stem.rsplit("-", 1)[1]
    cached = cache.get(sample.id, digest)
    ref = get_split_model("dinov2-cls", "tiny").forward_unsplit(sample.inputs)
    assert cached is not None and cached.label == ref.label
    np.testing.assert_array_equal(cached.probs, ref.probs)
    assert cache.get(sample.id, "0" * 16) is None  # another model or input misses


@pytest.mark.parametrize(("raw_dtype", "bpfp"), [(None, 32.0), ("float16", 16.0), ("bfloat16", 16.0)])
def test_raw_dtype_sets_the_stored_precision(cloud: ServerThread, tmp_path: Path, raw_dtype, bpfp) -> None:
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-cls", codec="raw", samples=2,
                           raw_dtype=raw_dtype)
    report = run(config, edge_settings(tmp_path))
    assert report["summary"]["ok"] == 2
    assert all(r["bpfp"] == bpfp for r in report["requests"])


def test_raw_dtype_with_another_codec_is_refused(cloud: ServerThread, tmp_path: Path) -> None:
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-cls", codec="hevc", qp=32, samples=1,
                           raw_dtype="float16")
    with pytest.raises(SplitfcError, match="raw_dtype applies to the raw codec only"):
        run(config, edge_settings(tmp_path))


def test_large_bitstreams_go_chunked(cloud: ServerThread, tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, chunk_bytes=32 * 1024)
    config = EdgeRunConfig(server=cloud.endpoints.grpc_target, split="dinov2-dpt", codec="raw", samples=2,
                           concurrency=2)
    report = run(config, settings)
    s = report["summary"]
    assert s["ok"] == 2 and s["chunked_requests"] == 2
    assert s["metric"]["metric"] == "RMSE" and s["metric"]["value"] == pytest.approx(0.0, abs=1e-5)
    per_chunk = 5 + 5  # gRPC frame header + field tags/lengths, at least
    assert s["wire_bytes_mean"] > s["payload_bytes_mean"] + per_chunk * (s["payload_bytes_mean"] // (32 * 1024))


def test_unavailable_is_retried_until_the_server_is_ready(tmp_path: Path) -> None:
    gate = threading.Event()

    def slow_loader(split: str, preset: str):
        gate.wait(60)
        return get_split_model(split, preset)

    server = ServerThread(cloud_settings(splits="dinov2-cls"), model_loader=slow_loader)
    ep = server.start(wait_ready=False)
    try:
        threading.Timer(0.8, gate.set).start()
        settings = edge_settings(tmp_path, retries=50, backoff_initial_s=0.05, backoff_max_s=0.2, deadline_s=30)
        config = EdgeRunConfig(server=ep.grpc_target, split="dinov2-cls", codec="raw", samples=1)
        report = run(config, settings)
        rec = report["requests"][0]
        assert rec["status"] == "OK" and rec["attempts"] > 1
        assert report["summary"]["retried_requests"] == 1
        unavailable = server.server.metrics.value(
            "splitfc_cloud_requests_total", {"split": "unknown", "codec": "unknown", "status": "UNAVAILABLE"})
        assert unavailable == rec["attempts"] - 1
    finally:
        gate.set()
        server.stop()


def test_errors_are_explicit_and_not_retried(tmp_path: Path) -> None:
    async def go() -> tuple:
        settings = edge_settings(tmp_path, retries=2, backoff_initial_s=0.01, deadline_s=10)
        async with EdgeClient("127.0.0.1:1", settings) as client:  # nothing listens there
            dead = await client.infer("r1", b"x")
        return dead

    dead = asyncio.run(go())
    assert dead.response is None and dead.code == grpc.StatusCode.UNAVAILABLE and dead.attempts == 3


def test_invalid_argument_is_not_retried(cloud: ServerThread, tmp_path: Path) -> None:
    async def go():
        async with EdgeClient(cloud.endpoints.grpc_target, edge_settings(tmp_path, retries=5)) as client:
            return await client.infer("bad", b"\x01\x02\x03")

    res = asyncio.run(go())
    assert res.code == grpc.StatusCode.INVALID_ARGUMENT and res.attempts == 1 and res.details


def test_deadline_ends_each_request_as_an_explicit_error(tmp_path: Path) -> None:
    release, entered = threading.Event(), threading.Semaphore(0)
    server = ServerThread(
        cloud_settings(splits="dinov2-cls", max_concurrency=1),
        model_loader=lambda s, p: BlockingModel(get_split_model(s, p), release, entered),
    )
    ep = server.start()
    try:
        config = EdgeRunConfig(server=ep.grpc_target, split="dinov2-cls", codec="raw", samples=3, concurrency=3,
                               deadline_s=0.5)
        report = run(config, edge_settings(tmp_path))
        s = report["summary"]
        assert s["ok"] == 0 and s["errors"] == 3 and s["errors_by_status"] == {"DEADLINE_EXCEEDED": 3}
        assert all(r["error"] for r in report["requests"]) and exit_code(report) == 1
        assert s["metric"] is None
    finally:
        release.set()
        server.stop()


def test_edge_and_cloud_logs_join_on_request_id(tmp_path: Path) -> None:
    cloud_log, edge_log = io.StringIO(), io.StringIO()
    server = ServerThread(cloud_settings(splits="dinov2-cls", log_requests=True),
                          logger=json_logger("test.cloud.requests", stream=cloud_log))
    ep = server.start()
    try:
        config = EdgeRunConfig(server=ep.grpc_target, split="dinov2-cls", codec="raw", samples=3, concurrency=2)
        report = run(config, edge_settings(tmp_path), logger=json_logger("test.edge.requests", stream=edge_log))
    finally:
        server.stop()
    cloud_lines = [json.loads(line) for line in cloud_log.getvalue().splitlines()]
    edge_lines = [json.loads(line) for line in edge_log.getvalue().splitlines()]
    assert len(cloud_lines) == len(edge_lines) == 3
    ids = {r["request_id"] for r in report["requests"]}
    assert {c["request_id"] for c in cloud_lines} == {e["request_id"] for e in edge_lines} == ids
    by_id = {c["request_id"]: c for c in cloud_lines}
    for e in edge_lines:
        c = by_id[e["request_id"]]
        assert e["side"] == "edge" and c["side"] == "cloud" and e["status"] == c["status"] == "OK"
        assert e["split"] == c["split"] == "dinov2-cls" and e["codec"] == c["codec"] == "raw" and e["qp"] == c["qp"]
        assert e["bpfp"] == c["bpfp"] == 32.0 and e["bitstream_bytes"] == c["bitstream_bytes"]
        for key in ("queue_ms", "decode_ms", "tail_ms", "total_ms"):
            assert c[key] >= 0
        for key in ("head_ms", "encode_ms", "network_ms", "server_ms", "total_ms"):
            assert e[key] >= 0
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", c["ts"])


# -- the CLI pieces ---------------------------------------------------------------------------------------

def test_edge_run_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edge", "run", "--server", "127.0.0.1:1", "--split", "dinov2-cls", "--codec", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("splitfc: error: unknown codec 'nope'")
    assert main(["edge", "run", "--server", "127.0.0.1:1", "--split", "dinov2-cls", "--codec", "hevc"]) == 2
    assert "needs --qp" in capsys.readouterr().err


@pytest.mark.slow
def test_cloud_serve_and_edge_run_as_separate_processes(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", SPLITFC_CLOUD_LOG_FILE=str(tmp_path / "cloud.jsonl"),
               SPLITFC_EDGE_CACHE_DIR=str(tmp_path / "refs"))
    cloud = subprocess.Popen(
        [sys.executable, "-m", "splitfc", "cloud", "serve", "--grpc-port", "0", "--http-port", "0",
         "--splits", "dinov2-cls"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = cloud.stderr.readline()
        while line and "gRPC" not in line:
            line = cloud.stderr.readline()
        match = re.search(r"gRPC (\S+)\s+HTTP (\S+)", line)
        assert match, line
        target = match.group(1)
        out = tmp_path / "edge.json"
        edge = subprocess.run(
            [sys.executable, "-m", "splitfc", "edge", "run", "--server", target, "--split", "dinov2-cls",
             "--codec", "raw", "--samples", "3", "--concurrency", "2", "--json", str(out), "--wait", "120"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert edge.returncode == 0, edge.stderr
        assert "requests 3  ok 3  errors 0" in edge.stdout
        report = json.loads(out.read_text())
        assert report["summary"]["ok"] == 3 and report["summary"]["bpfp_mean"] == 32.0
        cloud.send_signal(signal.SIGTERM)
        assert cloud.wait(60) == 0
        assert "stopped" in cloud.stderr.read()
        logged = [json.loads(x) for x in (tmp_path / "cloud.jsonl").read_text().splitlines()]
        assert {x["request_id"] for x in logged} == {r["request_id"] for r in report["requests"]}
    finally:
        if cloud.poll() is None:
            cloud.kill()
            cloud.wait()


def test_demo_prints_one_row_per_split(capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPLITFC_EDGE_CACHE_DIR", str(tmp_path / "refs"))
    demo = ["demo", "--preset", "tiny", "--samples", "1", "--codec", "raw", "--json", str(tmp_path / "demo.json")]
    assert main(demo) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split()[:1] and line.split()[0] in (
        "dinov2-cls", "dinov2-seg", "dinov2-dpt", "llama3-csr", "sd3-tti")]
    assert len(rows) == 5
    assert all(" raw " in r and "32.0000" in r for r in rows)
    reports = json.loads((tmp_path / "demo.json").read_text())
    assert [r["config"]["split"] for r in reports] == ["dinov2-cls", "dinov2-seg", "dinov2-dpt", "llama3-csr",
                                                        "sd3-tti"]
    assert all(r["summary"]["errors"] == 0 for r in reports)


def test_keepalive_and_message_limits_agree_with_the_cloud() -> None:
    from splitfc.cloud.settings import CloudSettings

    cloud, edge = CloudSettings(), EdgeSettings()
    # A client pinging more often than the server permits is sent GOAWAY (too_many_pings).
    assert edge.keepalive_time_ms >= cloud.min_ping_interval_ms
    assert edge.max_message_bytes == cloud.max_message_bytes
    assert edge.chunk_bytes < edge.max_message_bytes  # a chunk plus its header fits one message
    options = dict(edge.grpc_options())
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 16 << 20
    assert dict(cloud.grpc_options())["grpc.max_receive_message_length"] == 16 << 20


@pytest.mark.parametrize(("code", "attempts"), [
    (grpc.StatusCode.UNAVAILABLE, 2), (grpc.StatusCode.CANCELLED, 2), (grpc.StatusCode.INVALID_ARGUMENT, 1),
])
def test_retries_unavailable_and_stream_resets_only(code: grpc.StatusCode, attempts: int) -> None:
    """A replica dying behind nginx surfaces as UNAVAILABLE or CANCELLED: both retried, nothing else."""
    from splitfc.edge.settings import EdgeSettings
    from splitfc.v1 import service_pb2 as svc

    async def scenario() -> tuple[grpc.StatusCode, int]:
        client = EdgeClient("127.0.0.1:9", EdgeSettings(backoff_initial_s=0.01), warn=False)
        calls = 0
        sent: list[list[bytes]] = []

        async def attempt(chunked: bool, messages: list[bytes], timeout: float) -> svc.InferResponse:
            nonlocal calls
            calls += 1
            sent.append(messages)
            if calls == 1:
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "first call fails")
            return svc.InferResponse(request_id=svc.InferRequest.FromString(messages[0]).request_id)

        client._attempt = attempt  # type: ignore[method-assign]
        try:
            result = await client.infer("r1", b"x", deadline_s=5)
        finally:
            await client.close()
        # the request is serialized once: every attempt sends the same bytes objects
        assert all(m is sent[0] for m in sent)
        assert svc.InferRequest.FromString(sent[0][0]) == svc.InferRequest(request_id="r1", bitstream=b"x")
        assert result.wire_bytes == len(sent[0][0]) + 5
        return result.code, calls

    final, calls = asyncio.run(scenario())
    assert calls == attempts
    assert final == (grpc.StatusCode.OK if attempts == 2 else code)
