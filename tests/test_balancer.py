"""The compose topology without Docker: cloud replicas behind the real nginx balancer, on loopback.

Runs the compose file's own commands (cloud, lb, edge; host, ports and sample
count substituted) with the compose nginx config (deploy/local_lb.py renders
it for loopback). Checks that every replica serves traffic (their /metrics)
and that stopping replicas mid-run (one drained with SIGTERM, one killed with
SIGKILL) loses no request: the balancer and the edge's UNAVAILABLE retries
carry every request to a survivor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("local_lb", ROOT / "deploy" / "local_lb.py")
assert _spec is not None and _spec.loader is not None
local_lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_lb)

NGINX = local_lb.nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs nginx-light)")

SPLIT = "dinov2-cls"
SAMPLES = 120  # enough requests that the run outlasts the replicas' start-up and both stops, even under load
PROMETHEUS = shutil.which("prometheus")


_ISSUED_PORTS: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process handed out before (the servers bind later)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ISSUED_PORTS:
            _ISSUED_PORTS.add(port)
            return port


def with_flags(argv: list[str], **flags: str) -> list[str]:
    """``argv`` with the value after each ``--flag`` replaced (the flag must be there)."""
    out = list(argv)
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        assert flag in out, f"{flag} missing from the compose command {argv}"
        out[out.index(flag) + 1] = value
    return out


def compose_env(service: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in (local_lb.compose_services()[service].get("environment") or {}).items()})
    return env


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


@dataclass
class Replica:
    """One `splitfc cloud serve` process started with the compose cloud command."""

    name: str
    grpc_port: int
    http_port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def served_ok(self) -> int:
        """OK requests of our split according to this replica's /metrics."""
        status, text = http_get(f"http://127.0.0.1:{self.http_port}/metrics")
        assert status == 200, f"{self.name}: /metrics answered {status}"
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "splitfc_cloud_requests_total" and sample.labels.get("status") == "OK":
                    total += sample.value
        return int(total)

    def logged_ok_ids(self) -> set[str]:
        """Request ids this replica logged as OK (its request JSON lines)."""
        ids = set()
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("event") == "request" and rec.get("status") == "OK":
                    ids.add(rec["request_id"])
        return ids


def start_replica(name: str, tmp: Path) -> Replica:
    grpc_port, http_port = free_port(), free_port()
    argv = with_flags(local_lb.compose_services()["cloud"]["command"], host="127.0.0.1", grpc_port=str(grpc_port),
                      http_port=str(http_port), splits=SPLIT)
    log = tmp / f"{name}.jsonl"
    env = compose_env("cloud") | {"SPLITFC_CLOUD_LOG_FILE": str(log), "SPLITFC_CLOUD_DRAIN_SECONDS": "10"}
    proc = subprocess.Popen([sys.executable, "-m", "splitfc", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=(tmp / f"{name}.err").open("wb"))
    return Replica(name, grpc_port, http_port, log, proc)


def wait_until(what: str, check: object, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_prometheus(tmp: Path, replicas: list[Replica]) -> tuple[subprocess.Popen[bytes], int]:
    """The compose prometheus command and config; DNS discovery of `cloud` swapped for our replicas, 1 s scrapes."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "splitfc-cloud")
    cloud_command = local_lb.compose_services()["cloud"]["command"]
    assert job.pop("dns_sd_configs")[0]["port"] == int(cloud_command[cloud_command.index("--http-port") + 1])
    job["static_configs"] = [{"targets": [f"127.0.0.1:{r.http_port}" for r in replicas]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    web_port = free_port()
    argv = [a for a in local_lb.compose_services()["prometheus"]["command"] if not a.startswith("--config.file=")]
    argv += [f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"]
    proc = subprocess.Popen([PROMETHEUS, *argv], stdout=subprocess.DEVNULL,
                            stderr=(tmp / "prometheus.log").open("wb"))
    return proc, web_port


def promql(port: int, expr: str) -> list[dict]:
    """Evaluate ``expr`` now; the API must accept it."""
    status, body = http_get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, f"prometheus rejects {expr!r}"
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[list[Replica], int, Path, int | None]]:
    replicas: list[Replica] = []
    nginx = prometheus = None
    prom_port = None
    try:
        replicas = [start_replica(n, tmp_path) for n in ("a", "b", "c")]
        lb_port, status_port = free_port(), free_port()
        prefix = tmp_path / "nginx"
        conf = local_lb.render_prefix(prefix, f"127.0.0.1:{lb_port}", f"127.0.0.1:{status_port}",
                                      [f"127.0.0.1:{r.grpc_port}" for r in replicas])
        argv = local_lb.nginx_argv(prefix, conf, NGINX)
        check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(argv, stdout=(tmp_path / "nginx-access.log").open("wb"),
                                 stderr=(tmp_path / "nginx-error.log").open("wb"))
        wait_until("the balancer", lambda: http_get(f"http://127.0.0.1:{status_port}/lb-healthz")[0] == 200, 20)
        for r in replicas:
            url = f"http://127.0.0.1:{r.http_port}/readyz"
            wait_until(f"replica {r.name} ready",
                       lambda r=r, url=url: r.proc.poll() is None and http_get(url)[0] == 200, 240)
        if PROMETHEUS is not None:
            prometheus, prom_port = start_prometheus(tmp_path, replicas)
            wait_until("prometheus", lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready")[0] == 200, 60)
        yield replicas, lb_port, tmp_path, prom_port
    finally:
        for p in [nginx, prometheus, *(r.proc for r in replicas)]:
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.mark.slow
def test_replicas_share_traffic_and_stopping_them_loses_nothing(
    topology: tuple[list[Replica], int, Path, int | None],
) -> None:
    replicas, lb_port, tmp, prom_port = topology
    a, b, c = replicas
    report_path = tmp / "edge.json"
    argv = with_flags(local_lb.compose_services()["edge"]["command"], server=f"127.0.0.1:{lb_port}",
                      samples=str(SAMPLES))
    edge = subprocess.Popen([sys.executable, "-m", "splitfc", *argv, "--json", str(report_path)],
                            env=compose_env("edge"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Round robin: every replica gets requests.
        wait_until("all three replicas serving", lambda: all(r.served_ok() >= 2 for r in replicas), 240)
        if prom_port is not None:
            wait_until("prometheus to scrape all three serving", lambda: len(promql(
                prom_port, 'splitfc_cloud_requests_total{status="OK"} >= 2')) == 3, 30)
        served_before = {r.name: r.served_ok() for r in replicas}
        assert sum(served_before.values()) < SAMPLES - 8, "the run ended before the replicas could be stopped"
        b.proc.send_signal(signal.SIGTERM)  # graceful: drain in-flight, refuse new
        wait_until("progress after stopping b", lambda: a.served_ok() + c.served_ok()
                   >= served_before["a"] + served_before["c"] + 4, 120)
        c.proc.send_signal(signal.SIGKILL)  # abrupt: in-flight requests die with the process
        out, _ = edge.communicate(timeout=300)
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
    assert b.proc.wait(30) == 0
    assert c.proc.wait(5) == -signal.SIGKILL
    assert edge.returncode == 0, out.decode()[-3000:]

    report = json.loads(report_path.read_text())
    summary = report["summary"]
    assert summary["requests"] == SAMPLES
    assert summary["ok"] == SAMPLES
    assert summary["errors"] == 0
    # Every request the edge got an answer for was served by some replica: none lost, none invented.
    edge_ids = {r["request_id"] for r in report["requests"] if r["status"] == "OK"}
    served_ids = {r.name: r.logged_ok_ids() for r in replicas}
    assert len(edge_ids) == SAMPLES
    assert edge_ids <= set().union(*served_ids.values())
    for name, ids in served_ids.items():
        assert len(ids) >= served_before[name] >= 2, name
    # After both stops, the survivor took the rest.
    assert a.served_ok() == len(served_ids["a"])
    assert len(served_ids["a"]) > served_before["a"]

    if prom_port is None:
        return  # no Prometheus here (Debian package `prometheus`): the scrape checks need it
    # Prometheus (compose command and config) scraped every replica while it served.
    time.sleep(2)  # one more scrape of the survivor
    seen = promql(prom_port, 'max by (replica) (max_over_time(splitfc_cloud_requests_total{status="OK"}[10m]))')
    per_replica = {r["metric"]["replica"]: float(r["value"][1]) for r in seen}
    assert sorted(per_replica) == sorted(f"127.0.0.1:{r.http_port}" for r in replicas)
    assert all(v >= 2 for v in per_replica.values())
    assert per_replica[f"127.0.0.1:{a.http_port}"] == len(served_ids["a"])
    # Every Grafana dashboard query is valid PromQL here, and the core panels have data.
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "splitfc.json").read_text())
    results = {t["expr"]: promql(prom_port, t["expr"].replace("$__rate_interval", "1m"))
               for p in dash["panels"] for t in p["targets"]}
    with_data = {e for e, r in results.items() if r}
    for needle in ("splitfc_cloud_ready", "sum by (split) (rate(splitfc_cloud_requests_total",
                   "histogram_quantile(0.99, sum by (le, stage)", "splitfc_cloud_bpfp_sum",
                   "splitfc_cloud_bitstream_bytes_sum"):
        assert any(needle in e for e in with_data), needle
