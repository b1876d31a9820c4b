"""Faults: a cloud killed mid-run, a slow cloud, malformed responses, graceful shutdown under load.

In every case the edge reports each request as a result or an explicit error: none goes missing.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from _serving import ServerThread, cloud_settings, raw_bitstream, wait_until
from _slow_cloud import SlowModel

from splitfc.common.models import get_split_model
from splitfc.edge.client import EdgeClient
from splitfc.edge.runner import EdgeRunConfig, run_edge
from splitfc.edge.settings import EdgeSettings
from splitfc.v1 import service_pb2 as svc
from splitfc.v1 import service_pb2_grpc as svc_grpc

SPLIT = "dinov2-cls"
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_slow_cloud(port: int, delay: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HERE / "_slow_cloud.py"), str(port), str(delay)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready() -> None:
        async with EdgeClient(f"127.0.0.1:{port}", EdgeSettings()) as client:
            await client.wait_ready(120)

    asyncio.run(ready())
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def run_with_kill(port: int, samples: int, settings: EdgeSettings, kill: Any, tmp: Path) -> dict[str, Any]:
    """Run the edge against the cloud on ``port``; call ``kill()`` once the first request finished."""
    done = threading.Event()

    class FirstDone:
        def isEnabledFor(self, _level: int) -> bool:
            return True

        def info(self, *_a: Any, **_k: Any) -> None:
            done.set()

    killer = threading.Thread(target=lambda: (done.wait(60), kill()), daemon=True)
    killer.start()
    config = EdgeRunConfig(server=f"127.0.0.1:{port}", split=SPLIT, codec="raw", samples=samples, concurrency=4)
    report = asyncio.run(run_edge(config, settings, logger=FirstDone()))  # type: ignore[arg-type]
    killer.join(30)
    return report


def test_cloud_killed_mid_run_every_request_is_reported_failed_or_ok(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    port = free_port()
    procs.append(start_slow_cloud(port, 0.4))
    settings = EdgeSettings(retries=2, backoff_initial_s=0.05, backoff_max_s=0.1, deadline_s=20, cache_dir=tmp_path)
    report = run_with_kill(port, 12, settings, procs[0].kill, tmp_path)
    recs = report["requests"]
    assert len(recs) == 12 and len({r["request_id"] for r in recs}) == 12  # none missing
    statuses = {r["status"] for r in recs}
    assert statuses <= {"OK", "UNAVAILABLE"} and "UNAVAILABLE" in statuses and "OK" in statuses
    assert all(r["attempts"] == 3 for r in recs if r["status"] == "UNAVAILABLE")  # retried, then failed
    assert report["summary"]["ok"] + report["summary"]["errors"] == 12


def test_cloud_killed_and_restarted_retries_succeed(procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    port = free_port()
    procs.append(start_slow_cloud(port, 0.4))

    def kill_and_restart() -> None:
        procs[0].kill()
        procs[0].wait(10)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "_slow_cloud.py"), str(port), "0.4"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    settings = EdgeSettings(retries=200, backoff_initial_s=0.1, backoff_max_s=0.3, deadline_s=90, cache_dir=tmp_path)
    report = run_with_kill(port, 12, settings, kill_and_restart, tmp_path)
    recs = report["requests"]
    assert len(recs) == 12 and all(r["status"] == "OK" for r in recs), report["summary"]["errors_by_status"]
    assert report["summary"]["retried_requests"] >= 1


def test_slow_cloud_deadlines_fire_and_the_edge_reports_them(tmp_path: Path) -> None:
    release = threading.Event()
    loader = lambda split, preset: SlowModel(get_split_model(split, preset), 1.5)  # noqa: E731
    with ServerThread(cloud_settings(splits=SPLIT), model_loader=loader) as server:
        settings = EdgeSettings(retries=3, cache_dir=tmp_path)
        config = EdgeRunConfig(server=server.endpoints.grpc_target, split=SPLIT, codec="raw", samples=4,
                               concurrency=4, deadline_s=0.5)
        t0 = time.perf_counter()
        report = asyncio.run(run_edge(config, settings))
        assert time.perf_counter() - t0 < 1.4  # the edge did not wait for the slow tail
        recs = report["requests"]
        assert [r["status"] for r in recs] == ["DEADLINE_EXCEEDED"] * 4
        assert all(r["attempts"] == 1 for r in recs)  # a deadline is not retried
        metrics = server.server.metrics
        expired = {"split": "unknown", "codec": "unknown", "status": "DEADLINE_EXCEEDED"}

        def counted() -> float:
            return sum(metrics.value("splitfc_cloud_requests_total", {**expired, "split": s, "codec": c})
                       for s in ("unknown", SPLIT) for c in ("unknown", "raw"))

        assert wait_until(lambda: counted() == 4, timeout=15)
    release.set()


class MalformedCloud:
    """A fake SplitInference: GetInfo is fine, Infer answers bytes that are not an InferResponse, or a
    well-formed InferResponse whose task result is nonsense."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def info(self, _req: Any, _ctx: Any) -> svc.ServerInfo:
        return svc.ServerInfo(ready=True, preset="tiny", splits=[svc.SplitInfo(split=SPLIT)])

    def infer(self, _req: Any, _ctx: Any) -> bytes:
        with self.lock:
            self.n += 1
            n = self.n
        if n % 3 == 0:
            return b"\xff\xfe garbage, not protobuf"
        result = svc.TaskResult(task="cls")
        if n % 3 == 1:
            result.classification.num_classes = (1 << 31) - 1  # would allocate 8 GiB
        else:
            result.classification.top5_ids.extend([-5])
            result.classification.top5_probs.extend([0.5])
        return svc.InferResponse(request_id="x", result=result).SerializeToString()


def test_malformed_responses_are_reported_not_crashing(tmp_path: Path) -> None:
    fake = MalformedCloud()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handlers = {
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            fake.info, request_deserializer=svc.GetInfoRequest.FromString,
            response_serializer=svc.ServerInfo.SerializeToString),
        "Infer": grpc.unary_unary_rpc_method_handler(
            fake.infer, request_deserializer=svc.InferRequest.FromString, response_serializer=lambda b: b),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("splitfc.v1.SplitInference", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config = EdgeRunConfig(server=f"127.0.0.1:{port}", split=SPLIT, codec="raw", samples=6, concurrency=2)
        report = asyncio.run(run_edge(config, EdgeSettings(retries=0, cache_dir=tmp_path)))
    finally:
        server.stop(0)
    recs = report["requests"]
    assert len(recs) == 6
    by_status = report["summary"]["errors_by_status"]
    assert by_status == {"BAD_RESPONSE": 4, "INTERNAL": 2}, recs
    assert any("outside 0.." in r["error"] for r in recs)


def test_graceful_shutdown_under_load_finishes_in_flight_requests() -> None:
    loader = lambda split, preset: SlowModel(get_split_model(split, preset), 0.3)  # noqa: E731
    server = ServerThread(cloud_settings(splits=SPLIT, max_concurrency=2), model_loader=loader)
    ep = server.start()
    data, _ = raw_bitstream(SPLIT)
    stub = svc_grpc.SplitInferenceStub(grpc.insecure_channel(ep.grpc_target))
    calls = [stub.Infer.future(svc.InferRequest(request_id=f"r{i}", bitstream=data), timeout=60) for i in range(8)]
    metrics = server.server.metrics
    assert wait_until(lambda: metrics.value("splitfc_cloud_inflight_requests") == 8, timeout=20)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
    stopper.start()
    try:
        results = [c.result() for c in calls]  # every accepted request finishes OK
        assert [r.request_id for r in results] == [f"r{i}" for i in range(8)]
        assert all(r.result.WhichOneof("output") == "classification" for r in results)
    finally:
        stopper.join(60)
    with pytest.raises(grpc.RpcError) as info:  # after the drain nothing is accepted
        stub.Infer(svc.InferRequest(request_id="late", bitstream=data), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert metrics.value("splitfc_cloud_requests_total", {"split": SPLIT, "codec": "raw", "status": "OK"}) == 8
