"""``splitfc bench-serving``: the cloud's serving overhead, with and without dynamic batching.

The same pre-coded bitstreams are (a) parsed, decoded and run through ``tail``
in-process by a pool of as many worker threads as the server has in all
(processes x workers; no network, unbatched), and (b) sent to cloud servers
(separate processes by default) over loopback gRPC at several client concurrencies,
by a load generator in a process of its own: one server per ``--batching`` mode
(``on``: dynamic batching of the tail, ``off``: max_batch_size 1), per ``--client``
mode (``unary``: one Infer call per request; ``stream``: InferStream calls), all
rounds alternating so that a busy machine disturbs every mode alike. Per mode and
concurrency: throughput, ``vs_in_process`` = served / in-process throughput
(1.0 = served as fast as the bare work), p50/p99 latency, the tail batch sizes
the server ran (from its ``splitfc_cloud_tail_batches_total`` metric) and the CPU
the client process and the server used.
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
from dataclasses import dataclass
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
    p.add_argument("--batching", default="on,off",
                   help="server modes, comma-separated: on (dynamic batching) and/or off (default on,off)")
    p.add_argument("--max-batch-size", type=int,
                   help="max_batch_size of the 'on' server (default: cloud's SPLITFC_CLOUD_MAX_BATCH_SIZE)")
    p.add_argument("--max-batch-delay-ms", type=float,
                   help="max_batch_delay_ms of the 'on' server (default: cloud's SPLITFC_CLOUD_MAX_BATCH_DELAY_MS)")
    p.add_argument("--client", default="unary,stream",
                   help="client modes, comma-separated: unary (one Infer call per request, as the edge) and/or "
                   f"stream (InferStream calls of up to {STREAM_WINDOW} in flight; default unary,stream)")
    p.add_argument("--client-in-process", action="store_true",
                   help="run the load generator in this process (default: a process of its own, its CPU reported)")
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


STREAM_WINDOW = 8
"""Requests in flight per ``InferStream`` call in ``--client stream``: the server's default
``max_stream_unsent`` (more would wait for the server to read them, not run)."""


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of the processes ``pids`` and their children so far, this process (the
    client, a child of an in-process server's) excepted (None if unreadable)."""
    import psutil

    total = 0.0
    me = os.getpid()
    try:
        for pid in pids:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                if p.pid == me:
                    continue
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
    except psutil.Error:
        return None
    return total


async def served_throughput(
    target: str, bitstreams: list[bytes], requests: int, concurrency: int, connections: int = 1,
    client_mode: str = "unary", server_pids: list[int] | None = None,
) -> dict[str, Any]:
    """``requests`` requests with ``concurrency`` in flight over ``connections`` connections (round
    robin): ``client_mode`` ``unary`` (one ``Infer`` call each, as `EdgeClient.infer`) or ``stream``
    (``InferStream`` calls of up to `STREAM_WINDOW` in flight, as `EdgeClient.infer_stream`);
    throughput, latency percentiles, and the CPU seconds this process (the client) and ``server_pids``
    (with their children) used during the measurement."""
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
            if client_mode == "stream":
                warm = [(uuid.uuid4().hex, bitstreams[i % len(bitstreams)]) for i in range(min(4, requests))]
                async for _ in c.infer_stream(warm, window=4):
                    pass
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

        # stream mode: enough streams for the concurrency at STREAM_WINDOW each, at least one per connection
        streams = max(min(connections, concurrency), -(-concurrency // STREAM_WINDOW))
        windows = [concurrency // streams + (1 if k < concurrency % streams else 0) for k in range(streams)]

        async def stream(k: int) -> None:
            items = [(uuid.uuid4().hex, bitstreams[i % len(bitstreams)]) for i in range(k, requests, streams)]
            async for ans in clients[k % connections].infer_stream(items, window=windows[k]):
                if ans.response is None:
                    errors[ans.code.name] = errors.get(ans.code.name, 0) + 1
                    continue
                lat.append(ans.rtt_s)
                server_ms.append(ans.response.timing.total_ms)

        pids = server_pids or []
        server_cpu0, cpu0 = _cpu_seconds(pids), time.process_time()
        t0 = time.perf_counter()
        if client_mode == "stream":
            await asyncio.gather(*(stream(k) for k in range(streams)))
        else:
            await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
        cpu, server_cpu1 = time.process_time() - cpu0, _cpu_seconds(pids)
    server_cpu = None if server_cpu0 is None or server_cpu1 is None or not pids else server_cpu1 - server_cpu0
    return {
        "concurrency": concurrency, "client_mode": client_mode, "requests": requests, "ok": len(lat),
        "errors": errors, "throughput_rps": len(lat) / wall, "wall_s": wall,
        "latency_ms_p50": _percentile(lat, 50) * 1e3 if lat else None,
        "latency_ms_p99": _percentile(lat, 99) * 1e3 if lat else None,
        "server_total_ms_p50": _percentile(server_ms, 50) if server_ms else None,
        "client_cpu_s": cpu, "client_cpu_cores": cpu / wall,
        "server_cpu_s": server_cpu, "server_cpu_cores": None if server_cpu is None else server_cpu / wall,
        "server_cpu_ms_per_request": None if server_cpu is None or not lat else server_cpu / len(lat) * 1e3,
    }


def _served_in_child(args: tuple[Any, ...]) -> dict[str, Any]:
    """`served_throughput` in a client process of its own (``--client-process``, the default)."""
    return asyncio.run(served_throughput(*args))


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

    modes = _batch_modes(args, cloud_defaults)
    clients = [m.strip() for m in args.client.split(",") if m.strip()]
    if not clients or any(m not in ("unary", "stream") for m in clients) or len(set(clients)) != len(clients):
        raise SplitfcError(f"--client takes unary and/or stream, comma-separated, got {args.client!r}")
    print(f"bench-serving: preparing {args.samples} {args.split} bitstreams ({args.codec})", file=sys.stderr)
    bitstreams = head_bitstreams(args.split, "tiny", args.codec, args.qp, args.samples)
    servers: dict[str, _Server] = {}
    # Rounds alternate the in-process loop and every served mode, so a busy machine disturbs all
    # alike; each figure is the round with the median throughput.
    baselines: list[dict[str, Any]] = []
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {
        (m, c, level): [] for m in modes for c in clients for level in levels
    }
    pool = None
    if not args.client_in_process:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter (no gRPC or torch state forked); one process for every measurement
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        for mode, (size, delay_ms) in modes.items():
            servers[mode] = _start_server(args, workers, max(64, max(levels)), size, delay_ms)
        for round_ in range(args.repeat):
            print(f"bench-serving: round {round_ + 1}/{args.repeat}: in-process loop", file=sys.stderr)
            # as many threads as the served instance has workers in all (processes x workers)
            baselines.append(in_process_throughput(args.split, bitstreams, args.requests, workers * args.processes))
            for mode, server in servers.items():
                for client in clients:
                    for level in levels:
                        print(f"bench-serving: round {round_ + 1}/{args.repeat}: served, batching {mode}, "
                              f"{client} client, concurrency {level}", file=sys.stderr)
                        before = tail_batches(server.metrics_url, args.split)
                        # the server's CPU: its process (and engine processes); a server thread is this process,
                        # measurable only while the client runs elsewhere
                        pids = [server.proc.pid] if server.proc is not None else [] if pool is None else [os.getpid()]
                        call = (server.target, bitstreams, args.requests, level, args.connections, client, pids)
                        row = asyncio.run(served_throughput(*call)) if pool is None \
                            else pool.submit(_served_in_child, call).result()
                        row.update(batch_stats(tail_batches(server.metrics_url, args.split), before))
                        runs[(mode, client, level)].append(row)
    except Exception:
        for server in servers.values():
            server.report_exit()
        raise
    finally:
        for server in servers.values():
            server.stop()
        if pool is not None:
            pool.shutdown()
    baseline = _median_run(baselines)
    baseline["rounds_rps"] = [b["throughput_rps"] for b in baselines]
    served = []
    for (mode, _client, _level), rounds in runs.items():
        row = _median_run(rounds)
        size, delay_ms = modes[mode]
        row.update(batching=mode, max_batch_size=size, max_batch_delay_ms=delay_ms,
                   rounds_rps=[r["throughput_rps"] for r in rounds])
        rps = row["throughput_rps"]
        row["overhead_ratio"] = baseline["throughput_rps"] / rps if rps else None
        row["vs_in_process"] = rps / baseline["throughput_rps"]
        served.append(row)
    by_key = {(r["batching"], r["client_mode"], r["concurrency"]): r for r in served}
    for row in served:  # batching on / off at the same client mode and concurrency, same rounds
        off = by_key.get(("off", row["client_mode"], row["concurrency"]))
        if row["batching"] == "on" and off is not None and off["throughput_rps"]:
            row["vs_batching_off"] = row["throughput_rps"] / off["throughput_rps"]
    result = {
        "split": args.split, "codec": args.codec, "qp": args.qp, "preset": "tiny",
        "bitstream_bytes": sum(map(len, bitstreams)) // len(bitstreams), "workers": workers,
        "in_process_threads": workers * args.processes,
        "torch_threads": cloud_defaults.torch_threads, "cpus": os.cpu_count(),
        "server": "in-process thread" if args.in_process_server else "subprocess",
        "processes": args.processes, "connections": args.connections, "clients": clients,
        "client": "this process" if args.client_in_process else "a process of its own",
        "repeat": args.repeat, "requests": args.requests, "in_process": baseline, "served": served,
        "batching": {m: {"max_batch_size": size, "max_batch_delay_ms": delay} for m, (size, delay) in modes.items()},
    }
    print(format_bench(result))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _batch_modes(args: argparse.Namespace, defaults: Any) -> dict[str, tuple[int, float]]:
    """``--batching`` as {mode: (max_batch_size, max_batch_delay_ms)}; raises `SplitfcError`."""
    from splitfc.common.errors import SplitfcError

    names = [m.strip() for m in args.batching.split(",") if m.strip()]
    if not names or any(m not in ("on", "off") for m in names) or len(set(names)) != len(names):
        raise SplitfcError(f"--batching takes on and/or off, comma-separated, got {args.batching!r}")
    size = defaults.max_batch_size if args.max_batch_size is None else args.max_batch_size
    delay = defaults.max_batch_delay_ms if args.max_batch_delay_ms is None else args.max_batch_delay_ms
    if "on" in names and size < 2:
        raise SplitfcError(f"--batching on needs a max batch size >= 2, got {size} (--max-batch-size)")
    if delay < 0:
        raise SplitfcError(f"--max-batch-delay-ms must be >= 0, got {delay:g}")
    return {m: (size, delay) if m == "on" else (1, delay) for m in names}


@dataclass
class _Server:
    """A cloud server under test: a subprocess or a thread of this process."""

    target: str
    metrics_url: str
    proc: subprocess.Popen[bytes] | None = None
    thread: Any = None

    def report_exit(self) -> None:
        """Copy a dead server process's stderr to ours."""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr is not None:
            sys.stderr.write(self.proc.stderr.read().decode(errors="replace"))

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _start_server(
    args: argparse.Namespace, workers: int, max_queue: int, batch_size: int, delay_ms: float,
) -> _Server:
    """A server of ``args.split`` on free loopback ports with the given batching, ready to serve."""
    from splitfc.cloud.settings import CloudSettings

    settings = CloudSettings(
        grpc_port=_free_port(), http_port=_free_port(), splits=args.split, max_concurrency=workers,
        max_queue=max_queue, log_requests=False, max_batch_size=batch_size, max_batch_delay_ms=delay_ms,
    )
    metrics_url = f"http://127.0.0.1:{settings.http_port}/metrics"
    if args.in_process_server:
        from splitfc.cloud.server import ServerThread

        thread = ServerThread(settings)
        return _Server(thread.start().grpc_target, metrics_url, thread=thread)
    env = dict(os.environ)
    env.update({
        "SPLITFC_CLOUD_MAX_CONCURRENCY": str(workers), "SPLITFC_CLOUD_MAX_QUEUE": str(max_queue),
        "SPLITFC_CLOUD_LOG_REQUESTS": "false", "SPLITFC_CLOUD_PROCESSES": str(args.processes),
        "SPLITFC_CLOUD_MAX_BATCH_SIZE": str(batch_size), "SPLITFC_CLOUD_MAX_BATCH_DELAY_MS": str(delay_ms),
    })
    cmd = [
        sys.executable, "-m", "splitfc", "cloud", "serve", "--host", "127.0.0.1",
        "--grpc-port", str(settings.grpc_port), "--http-port", str(settings.http_port), "--splits", args.split,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = _Server(f"127.0.0.1:{settings.grpc_port}", metrics_url, proc=proc)
    try:
        _wait_all_engines(proc, f"http://127.0.0.1:{settings.http_port}/readyz")
    except BaseException:
        server.stop()
        raise
    return server


def tail_batches(metrics_url: str, split: str) -> dict[int, float]:
    """The server's tail batches run so far, {batch size: count} (``splitfc_cloud_tail_batches_total``)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=30) as resp:
        text = resp.read().decode()
    counts: dict[int, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "splitfc_cloud_tail_batches_total" and sample.labels.get("split") == split:
                counts[int(sample.labels["size"])] = counts.get(int(sample.labels["size"]), 0) + sample.value
    return counts


def batch_stats(after: dict[int, float], before: dict[int, float]) -> dict[str, Any]:
    """Batch sizes between two `tail_batches` reads: histogram {size: batches}, mean and max
    (None without batching: no batch ran)."""
    hist = {size: int(n - before.get(size, 0)) for size, n in sorted(after.items()) if n - before.get(size, 0) > 0}
    batches = sum(hist.values())
    return {
        "batch_sizes": {str(k): v for k, v in hist.items()},
        "batch_mean": sum(k * v for k, v in hist.items()) / batches if batches else None,
        "batch_max": max(hist) if hist else None,
    }


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
    modes = ", ".join(
        f"{m} (max_batch_size {v['max_batch_size']}, delay {v['max_batch_delay_ms']:g} ms)"
        for m, v in result.get("batching", {}).items()
    )
    lines = [
        f"split {result['split']}  codec {result['codec']}  bitstream {result['bitstream_bytes']} B  "
        f"{result.get('processes', 1)} process(es) x {result['workers']} workers x {result['torch_threads']} torch "
        f"threads  connections {result.get('connections', 1)}  server: {result['server']}  "
        f"{result['requests']} requests, median of {result['repeat']} rounds",
        f"batching: {modes}",
        f"client: {result.get('client', 'this process')}; CPU in cores (CPU seconds / wall seconds) of the "
        f"client process and of the server's",
        f"{'mode':<38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x in-proc':>9} {'x off':>6} {'batch mean':>10} "
        f"{'max':>4} {'cli cpu':>7} {'srv cpu':>7}",
        f"{'in-process loop, unbatched':<38} {b['throughput_rps']:>8.1f} {b['latency_ms_p50']:>8.2f} "
        f"{b['latency_ms_p99']:>8.2f} {'1.00':>9}",
    ]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for r in result["served"]:
        err = f"  errors {r['errors']}" if r["errors"] else ""
        mode = f"gRPC {r.get('client_mode', 'unary')} c={r['concurrency']}, batching {r.get('batching', 'off')}"
        lines.append(
            f"{mode:<38} {r['throughput_rps']:>8.1f} {num(r['latency_ms_p50'], '.2f'):>8} "
            f"{num(r['latency_ms_p99'], '.2f'):>8} {num(r.get('vs_in_process'), '.2f'):>9} "
            f"{num(r.get('vs_batching_off'), '.2f'):>6} {num(r.get('batch_mean'), '.2f'):>10} "
            f"{num(r.get('batch_max'), 'd'):>4} {num(r.get('client_cpu_cores'), '.2f'):>7} "
            f"{num(r.get('server_cpu_cores'), '.2f'):>7}{err}"
        )
    return "\n".join(lines)
