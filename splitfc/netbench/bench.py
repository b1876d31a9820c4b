"""``splitfc netbench`` end to end: link, cloud, edge, every point at every rate, the result.

The cloud (``splitfc cloud serve``) runs in the cloud namespace, the real edge (`driver`) in the
edge namespace; `measure` counts each point. Everything lives in the namespaces it creates and is
removed when done, also on errors and on SIGTERM/SIGHUP (exit status 128 + signal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitfc.common.errors import SplitfcError
from splitfc.netbench.driver import EdgeDriver
from splitfc.netbench.link import VethLink, namespaces_unavailable_reason, signals_raise, stop_process
from splitfc.netbench.measure import Point, add_speedups, default_points, format_row, format_speedups, measure_point
from splitfc.netbench.probe import format_probe, tcp_probe

GRPC_PORT = 50051
HTTP_PORT = 8000


@dataclass
class NetbenchOptions:
    """What one ``splitfc netbench`` run does (the CLI's flags)."""

    rates_mbit: list[float] = field(default_factory=lambda: [10.0])
    points: list[str] | None = None
    """Point labels (`Point.parse`); None: `default_points`."""
    split: str = "dinov2-dpt"
    preset: str = "tiny"
    samples: int = 8
    unshaped: bool = False
    delay_ms: float | None = None
    loss_pct: float | None = None
    tcp_probe: int | None = None
    """Bytes to send over plain TCP instead of running splitfc."""
    ready_timeout: float = 300.0
    json: Path | None = None


def run_netbench(opts: NetbenchOptions) -> int:
    """Run it; print one line per measurement; 0, or 1 when some point failed. Skips (0) without namespaces."""
    if not opts.rates_mbit or any(r <= 0 for r in opts.rates_mbit):
        raise SplitfcError("--rate-mbit must be positive")
    if opts.samples < 1:
        raise SplitfcError("--samples must be >= 1")
    if opts.tcp_probe is not None and opts.tcp_probe < 1:
        raise SplitfcError("--tcp-probe needs a positive byte count")
    points = [Point.parse(p) for p in (opts.points or ([] if opts.tcp_probe else default_points()))]
    reason = namespaces_unavailable_reason()
    if reason is not None:
        print(f"splitfc netbench: skipped: {reason}")
        return 0
    result: dict[str, Any] = {"rates_mbit": opts.rates_mbit, "delay_ms": opts.delay_ms, "loss_pct": opts.loss_pct}
    with signals_raise(), VethLink() as link, tempfile.TemporaryDirectory(prefix="splitfc-netbench-") as tmp:
        print(f"netbench: {link.edge.ns} ({link.edge.addr}) <-> {link.cloud.ns} ({link.cloud.addr}) over "
              f"{link.edge.dev}/{link.cloud.dev}", flush=True)
        # Refuse delay/loss before any work when the kernel cannot do them.
        link.shape(opts.rates_mbit[0], opts.delay_ms, opts.loss_pct)
        if opts.tcp_probe:
            result["tcp_probe"] = []
            for rate in opts.rates_mbit:
                link.shape(rate, opts.delay_ms, opts.loss_pct)
                row = tcp_probe(link, opts.tcp_probe)
                result["tcp_probe"].append(row)
                print(format_probe(row), flush=True)
        else:
            result.update(split=opts.split, preset=opts.preset, samples=opts.samples, failed=[])
            result["rows"] = run_points(link, opts, points, Path(tmp), result["failed"])
            for line in format_speedups(result["rows"]):
                print(line)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("failed") else 0


def run_points(link: VethLink, opts: NetbenchOptions, points: list[Point], workdir: Path,
               failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start the cloud in its namespace and the edge in its own, then every point at every rate.

    Points that fail are appended to ``failed`` and skipped.
    """
    log = (workdir / "cloud.log").open("wb")
    server = subprocess.Popen(
        link.cloud.argv([sys.executable, "-m", "splitfc", "cloud", "serve", "--host", link.cloud.addr, "--insecure",
                         "--grpc-port", str(GRPC_PORT), "--http-port", str(HTTP_PORT), "--preset", opts.preset,
                         "--splits", opts.split]),
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SPLITFC_CLOUD_LOG_REQUESTS": "false"},
    )
    driver = None
    try:
        wait_ready(link, server, workdir / "cloud.log", opts.ready_timeout)
        driver = EdgeDriver(link.edge, f"{link.cloud.addr}:{GRPC_PORT}", opts.split, opts.preset, opts.samples,
                            workdir)
        rows = []
        for rate in [None, *opts.rates_mbit] if opts.unshaped else opts.rates_mbit:
            if rate is None:
                link.unshape()
            else:
                link.shape(rate, opts.delay_ms, opts.loss_pct)
            for point in points:
                try:
                    row = measure_point(link, point, driver)
                except SplitfcError as exc:  # one bad point does not cost the others
                    failed.append({"rate_mbit": rate or 0.0, "point": point.label, "error": str(exc)})
                    print(f"netbench: {exc}", file=sys.stderr, flush=True)
                    continue
                rows.append(row)
                print(format_row(row), flush=True)
        add_speedups(rows)
        return rows
    finally:
        if driver is not None:
            driver.close()
        stop_process(server, timeout=30)
        log.close()


def wait_ready(link: VethLink, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll the cloud's /readyz from the edge namespace until 200; fail fast if the server exits."""
    url = f"http://{link.cloud.addr}:{HTTP_PORT}/readyz"
    code = textwrap.dedent(f"""
        import json, sys, urllib.error, urllib.request
        try:
            urllib.request.urlopen({url!r}, timeout=2)
        except urllib.error.HTTPError as e:  # 503 while loading; its body names a load error
            print(json.loads(e.read() or b"{{}}").get("error", ""))
            sys.exit(3)
    """)
    probe = link.edge.argv([sys.executable, "-c", code])
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise SplitfcError(f"the cloud server in {link.cloud.ns} exited: {last}")
        res = subprocess.run(probe, capture_output=True, text=True)
        if res.returncode == 0:
            return
        if res.returncode == 3 and res.stdout.strip():
            raise SplitfcError(f"the cloud server could not load its models: {res.stdout.strip()}")
        time.sleep(0.5)
    raise SplitfcError(f"the cloud server in {link.cloud.ns} did not become ready within {timeout:.0f} s")
