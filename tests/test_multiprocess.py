"""`splitfc cloud serve --processes 2`: two engine processes behind one gRPC port (SO_REUSEPORT), the
supervisor's HTTP side (/readyz, /v1/info, /metrics in Prometheus multiprocess mode), the restart of an
engine process that dies, and the start-up refusal of more CPU-bound threads than cores."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _serving import raw_bitstream, wait_until
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from splitfc.cloud.processes import check_cores, usable_cores
from splitfc.cloud.settings import CloudSettings
from splitfc.common.errors import SplitfcError
from splitfc.v1 import service_pb2 as svc

SPLIT = "dinov2-cls"
CHANNELS = 16
"""Client connections per round: the kernel hashes each to one of the two processes, so all 16 landing
on one process has probability 2 * 2**-16."""
START_S = 240.0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _readyz(http: str) -> dict[str, Any]:
    code, body = _get(http + "/readyz")
    return json.loads(body) if code in (200, 503) else {}


def _requests_total(http: str) -> dict[str, float]:
    """/metrics: ``splitfc_cloud_requests_total`` by status, all processes together."""
    code, body = _get(http + "/metrics")
    assert code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "splitfc_cloud_requests_total":
                out[sample.labels["status"]] = out.get(sample.labels["status"], 0.0) + sample.value
    return out


def _per_process_ok(metrics_dir: Path) -> dict[int, float]:
    """OK requests per engine pid, read from each process's own counter file."""
    out: dict[int, float] = {}
    for path in glob.glob(str(metrics_dir / "counter_*.db")):
        pid = int(Path(path).stem.split("_")[-1])
        for metric in MultiProcessCollector.merge([path]):
            for s in metric.samples:
                if s.name == "splitfc_cloud_requests_total" and s.labels.get("status") == "OK":
                    out[pid] = out.get(pid, 0.0) + s.value
    return out


def _send_round(target: str, data: bytes, expected_label: int, per_channel: int = 2) -> int:
    """``per_channel`` Infer calls on each of `CHANNELS` fresh connections; every answer checked."""
    request = svc.InferRequest(bitstream=data)
    sent = 0
    for c in range(CHANNELS):
        # A local subchannel pool: a connection of its own (channels otherwise share one per target).
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            infer = channel.unary_unary(
                "/splitfc.v1.SplitInference/Infer", request_serializer=svc.InferRequest.SerializeToString,
                response_deserializer=svc.InferResponse.FromString,
            )
            for k in range(per_channel):
                request.request_id = f"c{c}-{k}-{time.monotonic_ns()}"
                answer = infer(request, timeout=60)
                assert answer.request_id == request.request_id
                assert answer.result.WhichOneof("output") == "classification"
                assert answer.result.classification.label == expected_label
                sent += 1
    return sent


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("multiprocess")
    metrics_dir = tmp / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's file: removed at start-up
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), SPLITFC_CLOUD_LOG_REQUESTS="false")
    log = (tmp / "cloud.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitfc", "cloud", "serve", "--grpc-port", "0", "--http-port", "0", "--splits", SPLIT,
         "--processes", "2", "--max-concurrency", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        assert wait_until(lambda: "splitfc cloud: gRPC" in Path(log.name).read_text(), 60), Path(log.name).read_text()
        line = next(x for x in Path(log.name).read_text().splitlines() if "splitfc cloud: gRPC" in x)
        target, http = line.split()[3], line.split()[5]
        assert wait_until(lambda: _readyz(http).get("ready") is True, START_S, 0.5), Path(log.name).read_text()
        yield {"proc": proc, "target": target, "http": http, "metrics_dir": metrics_dir, "log": Path(log.name)}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _expected_label() -> tuple[bytes, int]:
    from splitfc.common.models import get_split_model

    data, sample = raw_bitstream(SPLIT)
    model = get_split_model(SPLIT, "tiny")
    return data, int(model.tail(model.head(sample.inputs)).label)  # raw float32 is lossless


def test_two_processes_share_the_port_and_metrics_add_up(cloud: dict[str, Any]) -> None:
    data, label = _expected_label()
    ready = _readyz(cloud["http"])
    pids = {e["pid"] for e in ready["engines"]}
    assert len(pids) == 2 and all(e["serving"] for e in ready["engines"]) and ready["loaded"] == [SPLIT]
    assert not (cloud["metrics_dir"] / "counter_1.db").exists()

    code, body = _get(cloud["http"] + "/v1/info")
    assert code == 200 and [s["split"] for s in json.loads(body)["splits"]] == [SPLIT]

    sent = _send_round(cloud["target"], data, label)
    per_process = _per_process_ok(cloud["metrics_dir"])
    assert set(per_process) == pids, per_process  # both processes served, nothing else wrote requests
    assert all(n > 0 for n in per_process.values()), per_process
    assert sum(per_process.values()) == sent
    assert _requests_total(cloud["http"]) == {"OK": sent}  # /metrics: the total of both processes

    # SIGKILL one engine process: the supervisor restarts it; its counts stay in /metrics.
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(
        lambda: (r := _readyz(cloud["http"])).get("ready") is True and victim not in {e["pid"] for e in r["engines"]},
        START_S, 0.5,
    ), cloud["log"].read_text()
    after = _readyz(cloud["http"])
    assert sum(e["restarts"] for e in after["engines"]) == 1
    new_pids = {e["pid"] for e in after["engines"]}
    assert len(new_pids - pids) == 1
    assert f"(pid {victim}) ended with signal SIGKILL; restarted it" in cloud["log"].read_text()
    # mark_process_dead dropped the dead process's live gauges (a livesum/livemin file per pid).
    assert not glob.glob(str(cloud["metrics_dir"] / f"gauge_live*_{victim}.db"))
    assert glob.glob(str(cloud["metrics_dir"] / f"counter_{victim}.db"))

    sent += _send_round(cloud["target"], data, label)
    assert _requests_total(cloud["http"]) == {"OK": sent}
    per_process = _per_process_ok(cloud["metrics_dir"])
    assert set(per_process) <= pids | new_pids and sum(per_process.values()) == sent
    assert per_process.get((new_pids - pids).pop(), 0) > 0  # the restarted process serves


def test_sigterm_stops_every_engine_process(cloud: dict[str, Any]) -> None:
    pids = [e["pid"] for e in _readyz(cloud["http"])["engines"]]
    cloud["proc"].send_signal(signal.SIGTERM)
    assert cloud["proc"].wait(60) == 0
    for pid in pids:
        assert wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10), f"engine {pid} still running"
    assert "splitfc cloud: stopped" in cloud["log"].read_text()


def test_more_threads_than_cores_is_refused() -> None:
    check_cores(CloudSettings(processes=2, max_concurrency=1), cores=2)
    with pytest.raises(SplitfcError, match=r"--processes 2 x max_concurrency 2 x torch_threads 1 = 4 .* on 2 usable"):
        check_cores(CloudSettings(processes=2, max_concurrency=2), cores=2)
    with pytest.raises(SplitfcError, match="= 3 CPU-bound threads on 2"):
        check_cores(CloudSettings(processes=3, max_concurrency=1), cores=2)


def test_usable_cores_honours_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cores(str(cpu_max)) == affinity
    cpu_max.write_text("150000 100000\n")  # limits.cpu 1.5: one whole core
    assert usable_cores(str(cpu_max)) == 1
    cpu_max.write_text("50000 100000\n")
    assert usable_cores(str(cpu_max)) == 1
    assert usable_cores(str(tmp_path / "absent")) == affinity


def test_cli_refuses_oversubscription_in_one_line(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    run = subprocess.run(
        [sys.executable, "-m", "splitfc", "cloud", "serve", "--grpc-port", "0", "--http-port", "0",
         "--processes", str(cores + 1), "--max-concurrency", "1"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "CPU-bound threads on" in lines[0] and "usable cores" in lines[0], run.stderr


def test_an_engine_that_cannot_start_stops_the_server_with_its_error(tmp_path: Path) -> None:
    """A failure before serving is not restarted (it would repeat): the supervisor exits with one line
    naming the engine and its error. Here: the paper preset with an empty heads folder."""
    empty = tmp_path / "no-heads"
    empty.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), HF_HUB_OFFLINE="1", SPLITFC_HF_DOWNLOADS="0",
               SPLITFC_HEADS_DIR=str(empty))  # no DINOv2 head files, even where they are installed
    run = subprocess.run(
        [sys.executable, "-m", "splitfc", "cloud", "serve", "--grpc-port", "0", "--http-port", "0",
         "--splits", SPLIT, "--preset", "paper", "--processes", "2", "--max-concurrency", "1"],
        capture_output=True, text=True, timeout=START_S, env=env,
    )
    assert run.returncode != 0
    error = [line for line in run.stderr.splitlines() if line.startswith("splitfc: error:")]
    assert len(error) == 1 and "before it served:" in error[0] and "engine process" in error[0], run.stderr
    assert "restarted" not in run.stderr
