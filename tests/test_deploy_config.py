"""Deployment files checked offline: compose, Dockerfile, nginx, Prometheus, Grafana, Kubernetes, locust.

Every `splitfc` command in the compose file and the manifests must parse with
the real CLI parser (and its `--help` must run); the nginx config must pass
`nginx -t`; the manifests must validate with kubernetes-validate; every metric
the Grafana dashboard queries must be one the cloud exports.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from splitfc.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
K8S_VERSION = "1.30.0"

_spec = importlib.util.spec_from_file_location("local_lb", DEPLOY / "local_lb.py")
assert _spec is not None and _spec.loader is not None
local_lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_lb)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def parse_splitfc(argv: list[str]) -> object:
    """Parse with the real CLI parser; argparse exits (status 2) on unknown commands or flags."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"splitfc rejects {argv} (exit {exc.code})") from None


def assert_help_runs(argv: list[str]) -> None:
    """`splitfc <subcommand...> --help` runs for the command path of ``argv``."""
    path = [a for a in argv[:2] if not a.startswith("-")]
    res = subprocess.run([sys.executable, "-m", "splitfc", *path, "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for option in (a for a in argv if a.startswith("--")):
        assert option in res.stdout, f"{option} not in `splitfc {' '.join(path)} --help`"


def k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_object(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


# ------------------------------------------------------------------ compose


def test_compose_has_the_demo_services() -> None:
    assert set(SERVICES) == {"cloud", "lb", "edge", "prometheus", "grafana"}
    assert SERVICES["cloud"]["deploy"]["replicas"] >= 2
    for name in ("cloud", "edge"):
        build = SERVICES[name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile" and build["context"] == "."
        assert build["target"] == name


@pytest.mark.parametrize("service", ["cloud", "edge"])
def test_compose_splitfc_commands_parse(service: str) -> None:
    argv = SERVICES[service]["command"]
    args = parse_splitfc(argv)
    assert args.func.__name__ == {"cloud": "cmd_cloud_serve", "edge": "cmd_edge_run"}[service]
    assert_help_runs(argv)


def test_compose_wiring_is_consistent() -> None:
    cloud = SERVICES["cloud"]["command"]
    edge = SERVICES["edge"]["command"]
    grpc_port, http_port = flag(cloud, "--grpc-port"), flag(cloud, "--http-port")
    assert flag(cloud, "--host") == "0.0.0.0"
    # The edge talks to the balancer, the balancer to the replicas' gRPC port.
    lb_port = (DEPLOY / "nginx" / "listen.conf").read_text().split("listen ")[1].split()[0]
    assert flag(edge, "--server") == f"lb:{lb_port}"
    assert f"{lb_port}:{lb_port}" in SERVICES["lb"]["ports"]
    assert f"server {local_lb.COMPOSE_UPSTREAM} " in (DEPLOY / "nginx" / "upstreams.conf").read_text()
    assert f"cloud:{grpc_port}" == local_lb.COMPOSE_UPSTREAM
    status_port = (DEPLOY / "nginx" / "status-listen.conf").read_text().split("listen ")[1].split(";")[0]
    assert f"http://127.0.0.1:{status_port}/lb-healthz" in SERVICES["lb"]["healthcheck"]["test"]
    # The lb mounts deploy/nginx where its -c points.
    conf = flag(SERVICES["lb"]["command"], "-c")
    assert f"./deploy/nginx:{Path(conf).parent}:ro" in SERVICES["lb"]["volumes"]
    # Health checks hit the cloud's HTTP port; Prometheus scrapes it on every replica.
    assert f"http://127.0.0.1:{http_port}/readyz" in " ".join(SERVICES["cloud"]["healthcheck"]["test"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "splitfc-cloud")
    assert job["metrics_path"] == "/metrics"
    sd = job["dns_sd_configs"]
    assert sd == [{"names": ["cloud"], "type": "A", "port": int(http_port), "refresh_interval": "10s"}]
    # Grafana reads the compose Prometheus and the mounted dashboards.
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and "9090:9090" in SERVICES["prometheus"]["ports"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/splitfc.yml").read_text())["providers"][0]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in SERVICES["grafana"]["volumes"]
    for path in [v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", [])]:
        assert (ROOT / path).exists(), path


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1, Debian's package), whichever is here."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    res = subprocess.run([*cli, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    # The validator does reject a broken file (a misspelt service key).
    broken = (ROOT / "docker-compose.yml").read_text().replace("    healthcheck:", "    healthchek:", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    for sub in ("deploy", "deploy/nginx", "deploy/prometheus", "deploy/grafana"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    res = subprocess.run([*cli, "-f", str(tmp_path / "docker-compose.yml"), "config", "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode != 0 and "healthchek" in res.stdout + res.stderr


# --------------------------------------------------------------- Dockerfile


def test_dockerfile_targets_user_and_health() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.M)
    assert stages == ["builder", "runtime", "edge", "cloud"]
    assert "download.pytorch.org/whl/cpu" in text
    assert 'ENTRYPOINT ["splitfc"]' in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.M)
    cloud_stage = text.split("AS cloud")[1]
    assert "HEALTHCHECK" in cloud_stage and "/readyz" in cloud_stage
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", cloud_stage, flags=re.M).group(1))
    parse_splitfc(cmd)
    assert "COPY deploy/vtm/ /opt/vtm/" in text and (DEPLOY / "vtm" / "README.md").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    # Everything the Dockerfile copies from the context exists and is not ignored.
    for src in re.findall(r"^COPY (?!--from)(\S+)/ ", text, flags=re.M):
        assert (ROOT / src).is_dir() and src not in ignored, src


# -------------------------------------------------------------------- nginx


@pytest.mark.skipif(local_lb.nginx_binary() is None, reason="nginx is not installed")
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = local_lb.render_prefix(tmp_path, "127.0.0.1:1", "127.0.0.1:2", ["127.0.0.1:3", "127.0.0.1:4"])
    argv = local_lb.nginx_argv(tmp_path, conf, local_lb.nginx_binary())
    res = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "syntax is ok" in res.stderr
    upstreams = (tmp_path / "conf" / "upstreams.conf").read_text()
    assert "server 127.0.0.1:3 max_fails=1 fail_timeout=5s;" in upstreams
    assert "server 127.0.0.1:4 max_fails=1 fail_timeout=5s;" in upstreams


def test_nginx_config_balances_grpc() -> None:
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "grpc_pass grpc://splitfc_cloud;" in text
    assert "client_max_body_size 0;" in text
    assert re.search(r"grpc_next_upstream [^;]*\berror\b[^;]*\bnon_idempotent\b", text)
    for include in ("listen.conf", "status-listen.conf", "upstreams.conf"):
        assert f"include {include};" in text and (DEPLOY / "nginx" / include).is_file()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_prometheus_config_passes_promtool() -> None:
    res = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


# ------------------------------------------------------------------ Grafana


def test_dashboard_queries_only_exported_metrics() -> None:
    from splitfc.cloud.metrics import CloudMetrics

    exported = set()
    for family in CloudMetrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[family.type]
        exported |= {family.name + s for s in suffixes}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "splitfc.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bsplitfc_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "p50", "p99", "stage", "bpfp", "bytes", "errors"):
        assert topic in titles, topic
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {"splitfc-prometheus"}


# --------------------------------------------------------------- Kubernetes


def test_k8s_manifests_validate() -> None:
    import kubernetes_validate

    docs = k8s_docs()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == sorted(["Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                            "ConfigMap", "Deployment", "Service", "Job"])
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name}: {doc['kind']}: {exc.message}") from None
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted({n for n, _ in docs})


def test_k8s_rejects_a_broken_manifest() -> None:
    import kubernetes_validate

    deployment = k8s_object("Deployment", "splitfc-cloud")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_topology() -> None:
    cloud = k8s_object("Deployment", "splitfc-cloud")
    container = cloud["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    args = container["args"]
    parse_splitfc(args)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(flag(args, "--grpc-port")), "http": int(flag(args, "--http-port"))}
    svc = k8s_object("Service", "splitfc-cloud")
    assert svc["spec"]["clusterIP"] == "None"  # headless: per-pod addresses, per-request balancing downstream
    assert svc["spec"]["selector"] == cloud["spec"]["selector"]["matchLabels"]
    hpa = k8s_object("HorizontalPodAutoscaler", "splitfc-cloud")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "splitfc-cloud"}
    assert hpa["spec"]["minReplicas"] >= 2
    # Envoy balances every call round robin over the headless Service, with gRPC health checks.
    envoy = yaml.safe_load(k8s_object("ConfigMap", "splitfc-lb")["data"]["envoy.yaml"])
    cluster = envoy["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] == "ROUND_ROBIN"
    assert "grpc_health_check" in cluster["health_checks"][0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "splitfc-cloud.splitfc.svc.cluster.local", "port_value": ports["grpc"]}
    job = k8s_object("Job", "splitfc-edge")
    edge_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert parse_splitfc(edge_args).func.__name__ == "cmd_edge_run"
    lb_port = envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert flag(edge_args, "--server") == f"splitfc-lb:{lb_port}"


# -------------------------------------------------------------- locust, make


def test_locustfile_loads_and_defines_a_grpc_user() -> None:
    res = subprocess.run([sys.executable, "-m", "locust", "-f", str(DEPLOY / "locust" / "locustfile.py"), "--list"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["Available", "Users:", "SplitInferenceUser"]


def test_makefile_targets() -> None:
    res = subprocess.run(["make", "-n", "-o", ".venv/.installed", "loadtest", "netbench"], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "deploy/loadtest.sh" in res.stdout
    netbench = next(line for line in res.stdout.splitlines() if "splitfc netbench" in line)
    parse_splitfc(netbench.split("splitfc ", 1)[1].split())


@pytest.mark.slow
def test_loadtest_script_counts_successes_and_failures(tmp_path: Path) -> None:
    # The server serves dinov2-cls only; the users also replay dinov2-seg, which it must refuse.
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "BIN": str(Path(sys.executable).parent),
        "LOADTEST_USERS": "2", "LOADTEST_SPAWN_RATE": "2", "LOADTEST_TIME": "4s", "LOADTEST_OUT": str(tmp_path),
        "LOADTEST_SERVER_SPLITS": "dinov2-cls", "SPLITFC_LOADTEST_SPLITS": "dinov2-cls,dinov2-seg",
        "SPLITFC_LOADTEST_CODEC": "raw", "SPLITFC_LOADTEST_QP": "0", "SPLITFC_LOADTEST_SAMPLES_PER_SPLIT": "1",
    }
    res = subprocess.run([str(DEPLOY / "loadtest.sh")], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert res.returncode != 0, "locust must exit non-zero when requests failed"
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    ok = rows["/splitfc.v1.SplitInference/Infer dinov2-cls"]
    bad = rows["/splitfc.v1.SplitInference/Infer dinov2-seg"]
    assert int(ok["Request Count"]) > 0 and int(ok["Failure Count"]) == 0
    assert int(bad["Request Count"]) > 0 and int(bad["Failure Count"]) == int(bad["Request Count"])
    failures = list(csv.DictReader((tmp_path / "locust_failures.csv").open()))
    assert {f["Name"] for f in failures} == {"/splitfc.v1.SplitInference/Infer dinov2-seg"}
    # The summary (as bench-serving's): per split and in all, with the tail batches the cloud ran.
    summary = json.loads((tmp_path / "summary.json").read_text())
    cls, seg = summary["splits"]["dinov2-cls"], summary["splits"]["dinov2-seg"]
    # The summary is taken at test_stop, the CSV's last write and the cloud's /metrics read at other moments
    # of the stop: the counts may differ by the requests in flight then (at most one per user, 2 here).
    in_flight = int(env["LOADTEST_USERS"])
    assert abs(cls["requests"] - int(ok["Request Count"])) <= in_flight, (cls, ok)
    assert cls["failures"] == 0 and cls["throughput_rps"] > 0
    assert cls["p50_ms"] is not None and cls["p99_ms"] >= cls["p50_ms"]
    assert abs(sum(int(k) * v for k, v in cls["batch_sizes"].items()) - cls["requests"]) <= in_flight
    assert seg["failures"] == seg["requests"] and seg["throughput_rps"] == 0 and seg["batch_sizes"] == {}
    assert summary["total"]["requests"] == cls["requests"] + seg["requests"]
    assert "loadtest summary:" in res.stdout and "tail batches (size:count)" in res.stdout
    # The script stopped the server it started.
    port = (tmp_path / "endpoints").read_text().split()[0].rsplit(":", 1)[1]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(port))) != 0
