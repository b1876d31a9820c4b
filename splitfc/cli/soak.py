"""``splitfc soak``: many requests at bounded concurrency against a cloud process, nothing lost.

Starts ``splitfc cloud serve`` (loopback, free ports) as a child process, pre-encodes a few
bitstreams of the tiny model, replays them ``--requests`` times with at most ``--concurrency`` in
flight through the edge client, and samples the cloud's RSS (psutil) every ``--sample-every``
seconds. The JSON report counts sent / answered (OK) / failed (a gRPC status) / lost (neither:
must be 0), cross-checks the cloud's own ``splitfc_cloud_requests_total``, and says whether memory
stayed flat (the last tenth of the run within ``--flat-tolerance`` of the second tenth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ORDER = 95


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="soak test: N requests at bounded concurrency, cloud RSS over time, 0 lost",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--requests", type=int, default=10_000, help="requests to send (default 10000)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    p.add_argument("--split", default="dinov2-cls", help="split (default dinov2-cls)")
    p.add_argument("--codec", default="raw", help="codec (default raw)")
    p.add_argument("--qp", type=int, default=0, help="rate of --codec")
    p.add_argument("--sample-every", type=float, default=1.0, help="RSS sampling period in seconds")
    p.add_argument("--flat-tolerance", type=float, default=0.10, help="relative RSS growth still called flat")
    p.add_argument("--json", type=Path, default=Path("results/soak.json"), help="report path")
    p.set_defaults(func=cmd_soak)


def _start_cloud(split: str, log: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "splitfc", "cloud", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
         "--http-port", "0", "--splits", split],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        env={**__import__("os").environ, "SPLITFC_CLOUD_LOG_REQUESTS": "false", "OMP_NUM_THREADS": "1"},
    )
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the cloud exited: {log.read_text()[-500:]}")
        m = re.search(r"splitfc cloud: gRPC (\S+)\s+HTTP (\S+)", log.read_text())
        if m:
            try:
                with urllib.request.urlopen(m.group(2) + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return proc, m.group(1), m.group(2)
            except OSError:
                pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the cloud did not become ready in 300 s")


def _served_total(http_url: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(http_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "splitfc_cloud_requests_total":
                total += s.value
    return total


async def soak(args: argparse.Namespace, target: str, pid: int) -> dict[str, Any]:
    import psutil

    from splitfc.common.samples import head_bitstreams
    from splitfc.edge.client import EdgeClient
    from splitfc.edge.settings import EdgeSettings

    payloads = head_bitstreams(args.split, "tiny", args.codec, args.qp, 4)
    proc = psutil.Process(pid)
    rss: list[tuple[float, int]] = []
    outcomes: dict[int, str] = {}
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.perf_counter()

    async def sampler() -> None:
        while True:
            rss.append((time.perf_counter() - t0, proc.memory_info().rss))
            await asyncio.sleep(args.sample_every)

    async with EdgeClient(target, EdgeSettings(retries=2, deadline_s=60)) as client:
        await client.wait_ready(60)

        async def one(i: int) -> None:
            async with sem:
                res = await client.infer(f"soak-{i}", payloads[i % len(payloads)])
                outcomes[i] = res.code.name

        sampling = asyncio.create_task(sampler())
        results = await asyncio.gather(*(one(i) for i in range(args.requests)), return_exceptions=True)
        sampling.cancel()
    rss.append((time.perf_counter() - t0, proc.memory_info().rss))
    wall = time.perf_counter() - t0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    answered = sum(1 for v in outcomes.values() if v == "OK")
    failed = len(outcomes) - answered
    by_status: dict[str, int] = {}
    for v in outcomes.values():
        by_status[v] = by_status.get(v, 0) + 1
    mib = [r / 2**20 for _, r in rss]
    tenth = max(1, len(mib) // 10)
    early, late = sorted(mib[tenth:2 * tenth])[len(mib[tenth:2 * tenth]) // 2], sorted(mib[-tenth:])[tenth // 2]
    return {
        "split": args.split, "codec": args.codec, "qp": args.qp, "concurrency": args.concurrency,
        "sent": args.requests, "answered": answered, "failed": failed,
        "lost": args.requests - answered - failed, "client_exceptions": errors[:5],
        "by_status": by_status, "wall_s": wall, "throughput_rps": args.requests / wall,
        "rss_mib": {"start": mib[0], "end": mib[-1], "max": max(mib), "early_median": early, "late_median": late},
        "rss_flat": late <= early * (1 + args.flat_tolerance),
        "rss_samples": [[round(t, 2), round(r / 2**20, 1)] for t, r in rss],
    }


def cmd_soak(args: argparse.Namespace) -> int:
    from splitfc.common.errors import SplitfcError

    if args.requests < 1 or args.concurrency < 1:
        raise SplitfcError("--requests and --concurrency must be >= 1")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    log = args.json.with_suffix(".cloud.log")
    try:
        proc, target, http_url = _start_cloud(args.split, log)
    except RuntimeError as exc:
        raise SplitfcError(str(exc)) from None
    try:
        report = asyncio.run(soak(args, target, proc.pid))
        report["cloud_counted"] = _served_total(http_url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    r = report["rss_mib"]
    print(f"sent {report['sent']}  answered {report['answered']}  failed {report['failed']}  lost {report['lost']}  "
          f"(cloud counted {report['cloud_counted']:.0f})  {report['throughput_rps']:.0f} req/s over "
          f"{report['wall_s']:.0f} s")
    print(f"cloud RSS MiB: start {r['start']:.0f}  end {r['end']:.0f}  max {r['max']:.0f}  "
          f"(2nd tenth {r['early_median']:.0f} -> last tenth {r['late_median']:.0f}: "
          f"{'flat' if report['rss_flat'] else 'GROWING'})")
    ok = report["lost"] == 0 and report["cloud_counted"] == report["sent"]
    return 0 if ok else 1
