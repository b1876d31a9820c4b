"""``splitfc bench-serving``: the cloud's serving overhead.

The same pre-coded bitstreams are (a) parsed, decoded and run through ``tail``
in-process by a pool of as many worker threads as the server has (no network),
and (b) sent to a cloud server (a separate process by default) over loopback
gRPC at several client concurrencies. Overhead ratio = in-process throughput /
served throughput (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-serving", help="measure serving overhead: cloud throughput vs the same decode+tail in-process",
    )
    p.add_argument("--concurrency", default="1,4,16", help="client concurrencies, comma-separated (default 1,4,16)")
    p.add_argument("--split", default="dinov2-cls", help="split id (default dinov2-cls)")
    p.add_argument("--codec", default="raw", help="codec of the bitstreams (default raw)")
    p.add_argument("--qp", type=int, default=0, help="rate of --codec (default 0)")
    p.add_argument("--requests", type=int, default=64, help="requests per measurement (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; the median round is reported (default 3)")
    p.add_argument("--samples", type=int, default=8, help="distinct bitstreams, sent round-robin (default 8)")
    p.add_argument("--workers", type=int, help="server max_concurrency and in-process pool size (default: cloud's)")
    p.add_argument("--in-process-server", action="store_true", help="run the server in this process (a thread)")
    p.add_argument("--processes", type=int, default=1,
                   help="server engine processes behind its one port (cloud serve --processes; default 1)")
    p.add_argument("--connections", type=int, default=1,
                   help="client connections, requests spread round robin (SO_REUSEPORT balances connections; "
                   "default 1)")
    p.add_argument("-o", "--output", type=Path, help="write the results as JSON")
    p.set_defaults(func=cmd_bench_serving)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def in_process_throughput(split: str, bitstreams: list[bytes], requests: int, workers: int) -> dict[str, float]:
    """The server's own per-request work (`InferenceEngine.work`: parse, validate, decode, tail,
    result encoding) on ``workers`` threads, without gRPC or the event loop."""
    import logging

    from splitfc.cloud.engine import InferenceEngine
    from splitfc.cloud.metrics import CloudMetrics
    from splitfc.cloud.request import RequestRecord
    from splitfc.cloud.settings import CloudSettings

    service = InferenceEngine(
        CloudSettings(splits=split, max_concurrency=workers), CloudMetrics(), logging.getLogger("bench-serving")
    )
    service.load_models()

    def work(i: int) -> float:
        t = time.perf_counter()
        service.work(bitstreams[i % len(bitstreams)], RequestRecord(request_id=str(i), method="bench"))
        return time.perf_counter() - t

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(min(4, requests))))  # warm-up
            t0 = time.perf_counter()
            lat = list(pool.map(work, range(requests)))
            wall = time.perf_counter() - t0
    finally:
        service.shutdown()
    return {
        "throughput_rps": requests / wall, "wall_s": wall,
        "latency_ms_p50": _percentile(lat, 50) * 1e3, "latency_ms_p99": _percentile(lat, 99) * 1e3,
    }


async def served_throughput(
    target: str, bitstreams: list[bytes], requests: int, concurrency: int, connections: int = 1,
) -> dict[str, Any]:
    """``requests`` unary calls with ``concurrency`` in flight over ``connections`` connections (round
    robin); throughput and latency percentiles."""
    import contextlib

    from splitfc.edge.client import EdgeClient
    from splitfc.edge.settings import EdgeSettings

    class OwnConnection(EdgeSettings):
        """A channel with a connection of its own (channels otherwise share one per target and arguments)."""

        def grpc_options(self) -> list[tuple[str, int]]:
            return [*super().grpc_options(), ("grpc.use_local_subchannel_pool", 1)]

    settings = OwnConnection(retries=0, deadline_s=120.0)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(EdgeClient(target, settings)) for _ in range(connections)]
        for c in clients:
            await c.wait_ready(120)
            for i in range(min(4, requests)):  # warm-up
                await c.infer(uuid.uuid4().hex, bitstreams[i % len(bitstreams)])
        sem = asyncio.Semaphore(concurrency)
        lat: list[float] = []
        server_ms: list[float] = []
        errors: dict[str, int] = {}

        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                res = await clients[i % connections].infer(uuid.uuid4().hex, bitstreams[i % len(bitstreams)])
                if res.response is None:
                    errors[res.code.name] = errors.get(res.code.name, 0) + 1
                    return
                lat.append(time.perf_counter() - t)
                server_ms.append(res.response.timing.total_ms)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency, "requests": requests, "ok": len(lat), "errors": errors,
        "throughput_rps": len(lat) / wall, "wall_s": wall,
        "latency_ms_p50": _percentile(lat, 50) * 1e3 if lat else None,
        "latency_ms_p99": _percentile(lat, 99) * 1e3 if lat else None,
        "server_total_ms_p50": _percentile(server_ms, 50) if server_ms else None,
    }


def cmd_bench_serving(args: argparse.Namespace) -> int:
    import torch

    from splitfc.cloud.settings import CloudSettings
    from splitfc.common.errors import SplitfcError
    from splitfc.common.samples import head_bitstreams

    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        raise SplitfcError(f"--concurrency takes comma-separated integers, got {args.concurrency!r}") from None
    if not levels or min(levels) < 1 or min(args.requests, args.samples, args.repeat, args.processes,
                                            args.connections) < 1:
        raise SplitfcError("--concurrency levels, --requests, --samples, --repeat, --processes and --connections "
                           "must be >= 1")
    if args.processes > 1 and args.in_process_server:
        raise SplitfcError("--processes needs the server in its own process (drop --in-process-server)")
    cloud_defaults = CloudSettings()
    workers = args.workers or cloud_defaults.max_concurrency
    torch.set_num_threads(cloud_defaults.torch_threads)

    print(f"bench-serving: preparing {args.samples} {args.split} bitstreams ({args.codec})", file=sys.stderr)
    bitstreams = head_bitstreams(args.split, "tiny", args.codec, args.qp, args.samples)
    settings = CloudSettings(
        grpc_port=_free_port(), http_port=_free_port(), splits=args.split, max_concurrency=workers,
        max_queue=max(64, max(levels)), log_requests=False,
    )
    proc: subprocess.Popen[bytes] | None = None
    thread = None
    if args.in_process_server:
        from splitfc.cloud.server import ServerThread

        thread = ServerThread(settings)
        target = thread.start().grpc_target
    else:
        env = dict(os.environ)
        env.update({
            "SPLITFC_CLOUD_MAX_CONCURRENCY": str(workers), "SPLITFC_CLOUD_MAX_QUEUE": str(settings.max_queue),
            "SPLITFC_CLOUD_LOG_REQUESTS": "false", "SPLITFC_CLOUD_PROCESSES": str(args.processes),
        })
        cmd = [
            sys.executable, "-m", "splitfc", "cloud", "serve", "--host", "127.0.0.1",
            "--grpc-port", str(settings.grpc_port), "--http-port", str(settings.http_port), "--splits", args.split,
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = f"127.0.0.1:{settings.grpc_port}"
        _wait_all_engines(proc, f"http://127.0.0.1:{settings.http_port}/readyz")
    # Rounds alternate in-process and served runs, so a busy machine disturbs both alike; each
    # figure is the round with the median throughput.
    baselines: list[dict[str, Any]] = []
    runs: dict[int, list[dict[str, Any]]] = {level: [] for level in levels}
    try:
        for round_ in range(args.repeat):
            print(f"bench-serving: round {round_ + 1}/{args.repeat}: in-process loop", file=sys.stderr)
            baselines.append(in_process_throughput(args.split, bitstreams, args.requests, workers))
            for level in levels:
                print(f"bench-serving: round {round_ + 1}/{args.repeat}: served, concurrency {level}", file=sys.stderr)
                runs[level].append(asyncio.run(
                    served_throughput(target, bitstreams, args.requests, level, args.connections)
                ))
    except Exception:
        if proc is not None and proc.poll() is not None and proc.stderr is not None:
            sys.stderr.write(proc.stderr.read().decode(errors="replace"))
        raise
    finally:
        if thread is not None:
            thread.stop()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    baseline = _median_run(baselines)
    baseline["rounds_rps"] = [b["throughput_rps"] for b in baselines]
    served = []
    for level in levels:
        row = _median_run(runs[level])
        row["rounds_rps"] = [r["throughput_rps"] for r in runs[level]]
        served.append(row)
    for row in served:
        row["overhead_ratio"] = baseline["throughput_rps"] / row["throughput_rps"] if row["throughput_rps"] else None
    result = {
        "split": args.split, "codec": args.codec, "qp": args.qp, "preset": "tiny",
        "bitstream_bytes": sum(map(len, bitstreams)) // len(bitstreams), "workers": workers,
        "torch_threads": cloud_defaults.torch_threads, "cpus": os.cpu_count(),
        "server": "in-process thread" if args.in_process_server else "subprocess",
        "processes": args.processes, "connections": args.connections,
        "repeat": args.repeat, "requests": args.requests, "in_process": baseline, "served": served,
    }
    print(format_bench(result))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _wait_all_engines(proc: subprocess.Popen[bytes], readyz: str, timeout: float = 600.0) -> None:
    """Wait for the server's /readyz (200: every engine process serves), so no round runs on fewer."""
    import urllib.request

    from splitfc.common.errors import SplitfcError

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr is not None else ""
            raise SplitfcError(f"cloud server exited with {proc.returncode} during start-up: {err.strip()[-500:]}")
        try:
            with urllib.request.urlopen(readyz, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SplitfcError(f"cloud server not ready after {timeout:g} s ({readyz})")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["throughput_rps"])
    return dict(ordered[(len(ordered) - 1) // 2])


def format_bench(result: dict[str, Any]) -> str:
    b = result["in_process"]
    lines = [
        f"split {result['split']}  codec {result['codec']}  bitstream {result['bitstream_bytes']} B  "
        f"{result.get('processes', 1)} process(es) x {result['workers']} workers x {result['torch_threads']} torch "
        f"threads  connections {result.get('connections', 1)}  server: {result['server']}  "
        f"{result['requests']} requests, median of {result['repeat']} rounds",
        f"{'mode':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'overhead':>9}",
        f"{'in-process loop':<22} {b['throughput_rps']:>8.1f} {b['latency_ms_p50']:>8.2f} {b['latency_ms_p99']:>8.2f} "
        f"{'1.00':>9}",
    ]
    for r in result["served"]:
        err = f"  errors {r['errors']}" if r["errors"] else ""
        p50 = "-" if r["latency_ms_p50"] is None else f"{r['latency_ms_p50']:.2f}"
        p99 = "-" if r["latency_ms_p99"] is None else f"{r['latency_ms_p99']:.2f}"
        ratio = "-" if r["overhead_ratio"] is None else f"{r['overhead_ratio']:.2f}"
        lines.append(
            f"{'gRPC, concurrency ' + str(r['concurrency']):<22} {r['throughput_rps']:>8.1f} {p50:>8} {p99:>8} "
            f"{ratio:>9}{err}"
        )
    return "\n".join(lines)
