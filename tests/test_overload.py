"""Back-pressure under overload: 4x the sustainable rate, short deadlines.

The test starts ``splitfc cloud serve`` (its own process: the load generator here shares no GIL
with it) with `SLOTS` workers and a queue bound of `MAX_QUEUE`, measures the sustainable rate first
(requests one at a time, the faster of two windows), then sends 4x that rate open-loop (arrivals on
a fixed schedule, whatever the answers do) with a deadline of `MARGIN` x the services an admitted
request can need (`worst_services`: those admitted before it, queued or running, shared by the
workers, plus its own), so the queue bound and RESOURCE_EXHAUSTED must keep every admitted request
within its deadline: each
request ends OK (before its deadline), RESOURCE_EXHAUSTED (the queue is full: "server busy"), or
DEADLINE_EXCEEDED only where the server's request log says the work never started; nothing else,
and no request the server finished is an answer too late. Figures are ratios of what this run
measured, with margins for a shared, busy machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
from _serving import raw_bitstream, wait_until

from splitfc.v1 import service_pb2 as svc

SPLIT = "dinov2-dpt"
"""A tail that does real work (tens of ms), so the sustainable rate is the server's, not the client's."""
SLOTS = 2
MAX_QUEUE = 2
OVERLOAD = 4.0
OVERLOAD_S = 6.0
MARGIN = 6.0
"""Deadline / (`worst_services` x the median service time): room for the machine slowing down during
the overload (the other jobs of a shared 2-core machine: 2.5-3x measured here). The edge's default
deadline is 60 s; this one is 1-6 s here."""
MIN_DEADLINE_S = 1.0


def worst_services() -> float:
    """Services an admitted request may need, in units of one request's service time: everything that
    can be admitted ahead of it (the queue, and the slots x requests per batch that may be running or
    waiting for their batch with dynamic batching on) shared by `SLOTS` workers, then its own."""
    from splitfc.cloud.settings import CloudSettings

    batch = int(getattr(CloudSettings(), "max_batch_size", 1))  # the server reads the same environment
    return (MAX_QUEUE + SLOTS * batch) / SLOTS + 1


async def _measure_sustainable(infer: Any, data: bytes, window_s: float) -> tuple[float, list[float]]:
    """Requests one at a time for ``window_s``: (requests/s, latencies s)."""
    latencies: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < window_s or len(latencies) < 5:
        t = time.perf_counter()
        await infer(svc.InferRequest(request_id=uuid.uuid4().hex, bitstream=data).SerializeToString(), timeout=60)
        latencies.append(time.perf_counter() - t)
    return len(latencies) / (time.perf_counter() - t0), latencies


async def _overload(infer: Any, data: bytes, rate: float, deadline_s: float) -> list[dict[str, Any]]:
    """Open loop: request i leaves at i / rate s, each with ``deadline_s``; one outcome per request."""
    outcomes: list[dict[str, Any]] = []

    async def one(i: int) -> None:
        rid = f"overload-{i}-{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        try:
            await infer(svc.InferRequest(request_id=rid, bitstream=data).SerializeToString(), timeout=deadline_s)
            code, details = "OK", ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        outcomes.append({"id": rid, "code": code, "details": details, "latency_s": time.perf_counter() - t})

    tasks = []
    n = max(1, round(rate * OVERLOAD_S))
    t0 = time.perf_counter()
    for i in range(n):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return outcomes


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(http + "/readyz", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


async def _drive(target: str, data: bytes) -> tuple[float, float, float, list[dict[str, Any]]]:
    """Warm up, measure the sustainable rate, then the overload: (rate, service s, deadline s, outcomes)."""
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            "/splitfc.v1.SplitInference/Infer", request_serializer=lambda b: b,
            response_deserializer=svc.InferResponse.FromString,
        )
        for _ in range(3):  # warm-up
            await infer(svc.InferRequest(request_id=uuid.uuid4().hex, bitstream=data).SerializeToString(), timeout=60)
        # The faster window: the sustainable rate when the machine is least busy (so 4x of it stays an
        # overload even if the other jobs on the machine stop meanwhile).
        windows = [await _measure_sustainable(infer, data, 1.5) for _ in range(2)]
        rate, latencies = max(windows, key=lambda w: w[0])
        service_s = statistics.median(latencies)
        deadline_s = max(MIN_DEADLINE_S, MARGIN * worst_services() * service_s)
        outcomes = await _overload(infer, data, OVERLOAD * rate, deadline_s)
        return rate, service_s, deadline_s, outcomes


def test_admitted_requests_meet_their_deadlines_at_4x_the_sustainable_load(tmp_path: Path) -> None:
    data, _ = raw_bitstream(SPLIT)
    log_path, err_path = tmp_path / "requests.jsonl", tmp_path / "cloud.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitfc", "cloud", "serve", "--grpc-port", "0", "--http-port", "0",
             "--splits", SPLIT, "--max-concurrency", str(SLOTS), "--max-queue", str(MAX_QUEUE),
             "--log-file", str(log_path)],
            stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, SPLITFC_CLOUD_DRAIN_SECONDS="30"),
        )
    try:
        assert wait_until(lambda: "splitfc cloud: gRPC" in err_path.read_text(), 120, 0.2), err_path.read_text()
        line = next(x for x in err_path.read_text().splitlines() if "splitfc cloud: gRPC" in x)
        target, http = line.split()[3], line.split()[5]
        assert wait_until(lambda: _ready(http), 180, 0.2), err_path.read_text()
        rate, service_s, deadline_s, outcomes = asyncio.run(_drive(target, data))
    finally:
        proc.send_signal(signal.SIGTERM)  # drains: every request is in the log once it has exited
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    records = {r["request_id"]: r for r in map(json.loads, log_path.read_text().splitlines())}

    codes = {c: sum(o["code"] == c for o in outcomes) for c in {o["code"] for o in outcomes}}
    ok = sorted(o["latency_s"] for o in outcomes if o["code"] == "OK")
    print(
        f"\nsustainable {rate:.1f} req/s (service p50 {service_s * 1e3:.1f} ms), sent {len(outcomes)} at "
        f"{OVERLOAD * rate:.1f} req/s, deadline {deadline_s:.2f} s ({MARGIN:g} x {worst_services():g} services): "
        f"{codes}; OK latency p50 "
        f"{statistics.median(ok) * 1e3 if ok else 0:.0f} ms, max {max(ok, default=0) * 1e3:.0f} ms "
        f"({max(ok, default=0) / deadline_s:.2f} of the deadline); goodput {len(ok) / OVERLOAD_S:.1f} req/s"
    )
    allowed = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
    assert set(codes) <= allowed, [o for o in outcomes if o["code"] not in allowed][:5]
    for o in outcomes:
        server_record = records.get(o["id"])
        if o["code"] == "OK":
            assert o["latency_s"] < deadline_s
        elif o["code"] == "RESOURCE_EXHAUSTED":
            assert "server busy" in o["details"], o  # the queue bound, not another limit
        else:  # DEADLINE_EXCEEDED: only for a request whose work never started
            assert server_record is not None, o
            error = server_record.get("error", "")
            assert "not started" in error or "before the request was admitted" in error, (o, server_record)
        if server_record is not None and server_record["status"] == "OK":
            assert o["code"] == "OK", (o, server_record)  # work done is never an answer too late
    # It was an overload (many refused), and the server kept doing useful work through it.
    assert codes.get("RESOURCE_EXHAUSTED", 0) >= 0.1 * len(outcomes), codes
    assert len(ok) >= 0.5 * rate * OVERLOAD_S, (len(ok), rate)
