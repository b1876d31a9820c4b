"""``splitfc netbench``: real transmission cost over a shaped link.

Two network namespaces (``sfc-edge-<pid>``, ``sfc-cloud-<pid>``) joined by a
veth pair, the link shaped with ``tbf`` (rate) in both directions and, where
the kernel has ``netem``, delay and loss. The cloud server runs in one
namespace, ``splitfc edge run`` in the other; bytes on the wire are the veth's
own counters (L2 frames: Ethernet + IP + TCP headers + payload), not estimates.
GSO is turned off on the veth (``gso_max_segs 1``) so every counted packet is
one wire-sized frame, as on a real link.

Everything lives in the namespaces it creates (10.251.0.1 <-> 10.251.0.2) and
is removed when done, also on errors and on SIGTERM/SIGINT. Without root or
namespace support it prints one ``skipped`` line and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitfc.common.errors import SplitfcError

ORDER = 80

EDGE_ADDR = "10.251.0.1"
CLOUD_ADDR = "10.251.0.2"
PREFIX_LEN = 30
MTU = 1500
ETH_IP_TCP_HEADER = 14 + 20 + 32
"""Bytes of headers per TCP segment on the wire: Ethernet, IPv4, TCP with the timestamp option."""
GRPC_PREFIX = 5
"""gRPC length-prefixed message header."""
HTTP2_FRAME_HEADER = 9
HTTP2_MAX_FRAME = 16384
"""Largest HTTP/2 DATA frame payload gRPC sends by default (SETTINGS_MAX_FRAME_SIZE)."""
GRPC_PORT = 50051
HTTP_PORT = 8000


class NamespacesUnavailable(Exception):
    """This machine does not let us create network namespaces (one-line reason)."""


class NetemUnavailable(SplitfcError):
    """Delay or loss was asked for but the kernel has no netem qdisc."""


# --------------------------------------------------------------------------- link


@dataclass(frozen=True)
class End:
    """One side of the link: its namespace, veth device and address."""

    ns: str
    dev: str
    addr: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass(frozen=True)
class Counters:
    """Interface counters of one veth end (bytes are whole L2 frames)."""

    tx_bytes: int
    tx_packets: int
    rx_bytes: int
    rx_packets: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.tx_bytes - other.tx_bytes, self.tx_packets - other.tx_packets,
            self.rx_bytes - other.rx_bytes, self.rx_packets - other.rx_packets,
        )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_unavailable_reason() -> str | None:
    """None when we may create network namespaces here, else why not (one line)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} tool (iproute2) is not installed"
    probe = f"sfc-probe-{os.getpid()}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"cannot create a network namespace: {' '.join(res.stderr.split()) or 'ip netns add failed'}"
    _ip("netns", "del", probe, check=False)
    return None


class VethLink:
    """An edge and a cloud namespace joined by a veth pair; a context manager that always cleans up."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid())
        self.edge = End(f"sfc-edge-{tag}", f"sfce{tag}"[:15], EDGE_ADDR)
        self.cloud = End(f"sfc-cloud-{tag}", f"sfcc{tag}"[:15], CLOUD_ADDR)
        self.created: list[str] = []
        self.rate_mbit: float | None = None

    def __enter__(self) -> VethLink:
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _run(self, argv: list[str]) -> None:
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            raise SplitfcError(f"{' '.join(argv)} failed: {' '.join(res.stderr.split())}")

    def _create(self) -> None:
        for end in (self.edge, self.cloud):
            self._run(["ip", "netns", "add", end.ns])
            self.created.append(end.ns)
        # Create the pair directly inside the namespaces: no device ever exists in ours.
        self._run(["ip", "-n", self.edge.ns, "link", "add", self.edge.dev, "type", "veth",
                   "peer", "name", self.cloud.dev, "netns", self.cloud.ns])
        for end in (self.edge, self.cloud):
            self._run(["ip", "-n", end.ns, "addr", "add", f"{end.addr}/{PREFIX_LEN}", "dev", end.dev])
            self._run(["ip", "-n", end.ns, "link", "set", end.dev, "mtu", str(MTU), "gso_max_segs", "1", "up"])
            self._run(["ip", "-n", end.ns, "link", "set", "lo", "up"])

    def remove(self) -> None:
        """Delete the namespaces (and with them the veth pair); idempotent."""
        while self.created:
            _ip("netns", "del", self.created.pop(), check=False)

    def exists(self) -> bool:
        names = _ip("netns", "list", check=False).stdout
        return any(line.split()[:1] in ([self.edge.ns], [self.cloud.ns]) for line in names.splitlines())

    def counters(self, end: End) -> Counters:
        out = _ip("-n", end.ns, "-s", "-j", "link", "show", "dev", end.dev).stdout
        stats = json.loads(out)[0]["stats64"]
        return Counters(stats["tx"]["bytes"], stats["tx"]["packets"], stats["rx"]["bytes"], stats["rx"]["packets"])

    def unshape(self) -> None:
        for end in (self.edge, self.cloud):
            subprocess.run(["tc", "-n", end.ns, "qdisc", "del", "dev", end.dev, "root"], capture_output=True)
        self.rate_mbit = None

    def shape(self, rate_mbit: float, delay_ms: float | None = None, loss_pct: float | None = None) -> None:
        """Shape both directions: tbf at ``rate_mbit``, plus netem delay/loss when asked (and available)."""
        if rate_mbit <= 0:
            raise SplitfcError(f"--rate-mbit must be positive, got {rate_mbit}")
        self.unshape()
        rate_bytes = rate_mbit * 1e6 / 8
        burst = max(4 * MTU, int(rate_bytes * 0.002))  # ~2 ms of line rate, at least a few frames
        limit = max(1 << 20, int(rate_bytes * 1.0))  # 1 s of queue: shaping, not dropping
        for end in (self.edge, self.cloud):
            self._run(["tc", "-n", end.ns, "qdisc", "add", "dev", end.dev, "root", "handle", "1:", "tbf",
                       "rate", f"{int(rate_mbit * 1e6)}bit", "burst", str(burst), "limit", str(limit)])
            if delay_ms or loss_pct:
                netem = ["tc", "-n", end.ns, "qdisc", "add", "dev", end.dev, "parent", "1:1", "handle", "10:", "netem"]
                if delay_ms:
                    netem += ["delay", f"{delay_ms / 2:g}ms"]  # half each way: delay_ms is the round trip
                if loss_pct:
                    netem += ["loss", f"{loss_pct:g}%"]
                res = subprocess.run(netem, capture_output=True, text=True)
                if res.returncode != 0:
                    if "unknown" in res.stderr.lower() or "no such file" in res.stderr.lower():
                        raise NetemUnavailable(
                            "--delay-ms/--loss-pct need the netem qdisc, which this kernel does not have "
                            "(rate shaping with tbf works without them)"
                        )
                    raise SplitfcError(f"tc netem failed: {' '.join(res.stderr.split())}")
        self.rate_mbit = rate_mbit


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit for the duration, so cleanup code runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------- TCP probe

_RECEIVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept(); n = 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        n += len(d)
    c.sendall(b"k"); c.close(); print(n, flush=True)
""")
_SENDER = textwrap.dedent("""
    import socket, sys, time
    n = int(sys.argv[3]); data = bytes(n)
    t = time.perf_counter()
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    s.sendall(data); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
    print(time.perf_counter() - t, flush=True)
""")


def tcp_probe(link: VethLink, nbytes: int, port: int = 9000) -> dict[str, float | int]:
    """Send ``nbytes`` over plain TCP edge -> cloud; wire bytes from the veth counters."""
    receiver = subprocess.Popen(link.cloud.argv([sys.executable, "-c", _RECEIVER, link.cloud.addr, str(port)]),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise SplitfcError("tcp probe: the receiver did not start")
        before = link.counters(link.edge)
        sender = subprocess.run(link.edge.argv([sys.executable, "-c", _SENDER, link.cloud.addr, str(port),
                                                str(nbytes)]), capture_output=True, text=True, timeout=600)
        if sender.returncode != 0:
            raise SplitfcError(f"tcp probe: sender failed: {' '.join(sender.stderr.split())}")
        received = int(receiver.stdout.readline())
        receiver.wait(30)
        time.sleep(0.2)  # let the last ACKs and the FIN exchange land in the counters
        delta = link.counters(link.edge) - before
    finally:
        _stop(receiver)
    seconds = float(sender.stdout.strip())
    expected = nbytes + delta.tx_packets * ETH_IP_TCP_HEADER
    return {
        "payload_bytes": nbytes,
        "received_bytes": received,
        "wire_bytes": delta.tx_bytes,
        "wire_packets": delta.tx_packets,
        "wire_bytes_back": delta.rx_bytes,
        "expected_wire_bytes": expected,
        "wire_over_expected": delta.tx_bytes / expected,
        "seconds": seconds,
        "wire_mbit_per_s": delta.tx_bytes * 8 / seconds / 1e6,
        "rate_mbit": link.rate_mbit or 0.0,
    }


# --------------------------------------------------------------- splitfc over the link


@dataclass(frozen=True)
class Point:
    """One codec operating point, e.g. ``raw-f32``, ``raw-f16`` or ``vvenc:32``."""

    label: str
    codec: str
    qp: int
    raw_dtype: str | None = None

    @classmethod
    def parse(cls, text: str) -> Point:
        text = text.strip()
        if text in RAW_POINTS:
            return RAW_POINTS[text]
        codec, sep, rate = text.partition(":")
        if not sep or not rate.lstrip("-").isdigit():
            raise SplitfcError(f"bad point {text!r}: use raw-f32, raw-f16 or CODEC:RATE (e.g. vvenc:32)")
        from splitfc.common.codecs import CODECS

        if codec not in CODECS:
            raise SplitfcError(f"bad point {text!r}: unknown codec {codec!r}; valid codecs: {', '.join(CODECS)}")
        reason = CODECS[codec].unavailable_reason()
        if reason is not None:
            raise SplitfcError(f"point {text}: codec {codec} is unavailable: {reason}")
        return cls(text, codec, int(rate))


RAW_POINTS = {
    "raw-f32": Point("raw-f32", "raw", 0, "float32"),
    "raw-f16": Point("raw-f16", "raw", 0, "float16"),
}


def default_points() -> list[str]:
    """raw float32/float16, then every available frame/learned codec at two of its rate points."""
    from splitfc.common.codecs import CODECS

    points = ["raw-f32", "raw-f16"]
    for name in ("vvenc", "hevc", "hyperprior"):
        cls = CODECS.get(name)
        if cls is None or cls.unavailable_reason() is not None or not cls.rates:
            continue
        rates = sorted(set(cls.rates))
        picks = [rates[len(rates) // 3], rates[-1]] if len(rates) > 1 else rates
        points += [f"{name}:{r}" for r in dict.fromkeys(picks)]
    return points


def grpc_request_overhead(message_bytes: int) -> int:
    """gRPC + HTTP/2 framing of one unary request message (DATA frames + the 5-byte prefix)."""
    body = message_bytes + GRPC_PREFIX
    return GRPC_PREFIX + HTTP2_FRAME_HEADER * max(1, -(-body // HTTP2_MAX_FRAME))


HEADERS_PER_REQUEST = 120
"""Request HEADERS frame (HPACK: path, authority, content-type, te, deadline, user agent), approximate."""
PER_CONNECTION = 400
"""Connection preface, SETTINGS, WINDOW_UPDATE and their ACKs, approximate (amortized over a run)."""


def _wait_ready(link: VethLink, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
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


def _splitfc_argv() -> list[str]:
    return [sys.executable, "-m", "splitfc"]


def drive_edge(server: str, split: str, preset: str, samples: int) -> None:
    """The edge, run inside the edge namespace: one JSON command per stdin line, one JSON result per stdout line.

    A command ``{"codec": ..., "qp": ..., "raw_dtype": ...}`` sends every sample once,
    one at a time: head -> encode -> Infer over one long-lived channel. Built from the
    edge's own pieces (the model head, `encode_features`, `EdgeClient` with its
    UNAVAILABLE retries); unlike ``splitfc edge run`` it can code raw features as
    float16, the second baseline, and it loads the model once for all points.
    """
    import asyncio
    import uuid

    from splitfc.common.bitstream import bitstream_stats, encode_features
    from splitfc.common.codecs import get_codec
    from splitfc.common.codecs.raw import RawCodec
    from splitfc.common.models import get_split_model, tiny_samples
    from splitfc.edge.client import GRPC_FRAME_HEADER, EdgeClient
    from splitfc.edge.settings import EdgeSettings

    model = get_split_model(split, preset=preset)
    inputs = tiny_samples(split, samples)

    async def point(
        client: EdgeClient, codec_name: str, qp: int, raw_dtype: str | None, limit: int | None,
    ) -> list[dict]:
        codec = RawCodec(store_dtype=raw_dtype) if codec_name == "raw" else get_codec(codec_name)
        rows = []
        for sample in inputs[:limit]:
            t0 = time.perf_counter()
            msg = encode_features(model.head(sample.inputs), split, codec, qp)
            data = msg.SerializeToString()
            t1 = time.perf_counter()
            call = await client.infer(uuid.uuid4().hex, data)
            t2 = time.perf_counter()
            if call.response is None:
                raise SplitfcError(f"request failed: {call.code.name}: {call.details}")
            stats = bitstream_stats(msg)
            rows.append({
                "bitstream_bytes": len(data), "payload_bytes": stats.payload_bits // 8, "bpfp": stats.bpfp,
                "request_message_bytes": call.wire_bytes - GRPC_FRAME_HEADER,
                "response_message_bytes": call.response.ByteSize(),
                "head_encode_ms": (t1 - t0) * 1e3, "rtt_ms": call.rtt_s * 1e3,
                "server_ms": call.response.timing.total_ms,
                "server_compute_ms": call.response.timing.decode_ms + call.response.timing.tail_ms,
                "total_ms": (t2 - t0) * 1e3, "attempts": call.attempts,
            })
        return rows

    async def run() -> None:
        async with EdgeClient(server, EdgeSettings(allow_plaintext=True)) as client:
            await client.wait_ready(120.0)
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                cmd = json.loads(line)
                try:
                    rows = await point(client, cmd["codec"], int(cmd["qp"]), cmd.get("raw_dtype"), cmd.get("limit"))
                except Exception as exc:  # report it and stay up for the next point
                    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
                else:
                    print(json.dumps({"requests": rows}), flush=True)

    asyncio.run(run())


class EdgeDriver:
    """The `drive_edge` process in the edge namespace, one point at a time."""

    def __init__(self, link: VethLink, args: argparse.Namespace, stderr: Path) -> None:
        code = ("import sys; from splitfc.cli.netbench import drive_edge; a = sys.argv[1:]; "
                "drive_edge(a[0], a[1], a[2], int(a[3]))")
        self._err = stderr.open("w")
        self.proc = subprocess.Popen(
            link.edge.argv([sys.executable, "-c", code, f"{link.cloud.addr}:{GRPC_PORT}", args.split, args.preset,
                            str(args.samples)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
        )
        self.stderr = stderr
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._err.flush()
            last = (self.stderr.read_text().strip().splitlines() or ["no output"])[-1]
            raise SplitfcError(f"the edge failed: {last}")
        return json.loads(line)

    def run(self, point: Point, limit: int | None = None) -> dict:
        """Every sample (or the first ``limit``) through ``point``; the driver's report."""
        assert self.proc.stdin is not None
        cmd = {"codec": point.codec, "qp": point.qp, "raw_dtype": point.raw_dtype, "limit": limit}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        _stop(self.proc)
        self._err.close()


def edge_summary(report: dict) -> dict:
    """Totals and latency statistics of one driver report."""
    reqs = report["requests"]
    total = [r["total_ms"] for r in reqs]
    return {
        "requests": len(reqs),
        "bitstream_bytes": sum(r["bitstream_bytes"] for r in reqs) / len(reqs),
        "payload_bytes": sum(r["payload_bytes"] for r in reqs) / len(reqs),
        "bpfp": sum(r["bpfp"] for r in reqs) / len(reqs),
        "request_message_bytes_total": sum(r["request_message_bytes"] for r in reqs),
        "response_message_bytes_total": sum(r["response_message_bytes"] for r in reqs),
        "latency_ms_mean": sum(total) / len(total),
        "latency_ms_p50": _percentile(total, 50),
        "latency_ms_p95": _percentile(total, 95),
        "rtt_ms_mean": sum(r["rtt_ms"] for r in reqs) / len(reqs),
        "head_encode_ms_mean": sum(r["head_encode_ms"] for r in reqs) / len(reqs),
        "server_ms_mean": sum(r["server_ms"] for r in reqs) / len(reqs),
        "server_compute_ms_mean": sum(r["server_compute_ms"] for r in reqs) / len(reqs),
        "retried": sum(1 for r in reqs if r["attempts"] > 1),
    }


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def measure_point(link: VethLink, point: Point, driver: EdgeDriver) -> dict:
    """One point: veth counters around it, the edge's own per-request report inside it.

    One request first, not counted: the codec's first-use costs (checkpoint load, caches) on
    both sides stay out of the numbers.
    """
    warm = driver.run(point, limit=1)
    if "error" in warm:
        raise SplitfcError(f"point {point.label} failed: {warm['error']}")
    time.sleep(0.2)
    before = link.counters(link.edge)
    report = driver.run(point)
    if "error" in report:
        raise SplitfcError(f"point {point.label} failed: {report['error']}")
    time.sleep(0.3)  # trailing ACKs / GOAWAY
    delta = link.counters(link.edge) - before
    summary = edge_summary(report)
    n = summary["requests"]
    msgs = [r["request_message_bytes"] for r in report["requests"]]
    expected_up = (sum(m + grpc_request_overhead(m) + HEADERS_PER_REQUEST for m in msgs) + PER_CONNECTION
                   + delta.tx_packets * ETH_IP_TCP_HEADER)
    rate = link.rate_mbit
    up_per_req = delta.tx_bytes / n
    down_per_req = delta.rx_bytes / n
    return {
        "rate_mbit": rate or 0.0,
        "point": point.label,
        "codec": point.codec,
        "qp": point.qp,
        "requests": n,
        "bitstream_bytes": summary["bitstream_bytes"],
        "payload_bytes": summary["payload_bytes"],
        "bpfp": summary["bpfp"],
        "wire_up_bytes": delta.tx_bytes,
        "wire_up_packets": delta.tx_packets,
        "wire_down_bytes": delta.rx_bytes,
        "wire_up_bytes_per_request": up_per_req,
        "expected_wire_up_bytes": expected_up,
        "wire_over_expected": delta.tx_bytes / expected_up,
        "transfer_ms": (up_per_req + down_per_req) * 8 / (rate * 1e6) * 1e3 if rate else None,
        "latency_ms_mean": summary["latency_ms_mean"],
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p95": summary["latency_ms_p95"],
        "head_encode_ms_mean": summary["head_encode_ms_mean"],
        "server_compute_ms_mean": summary["server_compute_ms_mean"],
        "network_ms_mean": summary["latency_ms_mean"] - summary["head_encode_ms_mean"]
        - summary["server_compute_ms_mean"],
        "retried_requests": summary["retried"],
    }


def add_speedups(rows: list[dict]) -> None:
    """Speed-up of each row over raw float32/float16 at the same link rate, measured and predicted.

    Measured: ratio of mean end-to-end latencies (head + encode + request + server + response).
    Predicted: the same with the network part replaced by bytes / bandwidth, i.e. each row's
    measured compute (edge head + encode, server decode + tail) plus its wire bytes (both
    directions, as counted on the veth) / rate.
    """
    by_rate: dict[float, dict[str, dict]] = {}
    for r in rows:
        by_rate.setdefault(r["rate_mbit"], {})[r["point"]] = r
    for r in rows:
        r["predicted_latency_ms"] = (r["head_encode_ms_mean"] + r["server_compute_ms_mean"] + r["transfer_ms"]
                                     if r["rate_mbit"] else None)
    for rate, points in by_rate.items():
        for r in points.values():
            for ref in ("raw-f32", "raw-f16"):
                base = points.get(ref)
                key = ref.replace("-", "_")
                r[f"speedup_vs_{key}"] = base["latency_ms_mean"] / r["latency_ms_mean"] if base else None
                r[f"predicted_speedup_vs_{key}"] = (
                    base["predicted_latency_ms"] / r["predicted_latency_ms"] if base and rate else None
                )


def run_splitfc_bench(link: VethLink, args: argparse.Namespace, points: list[Point], workdir: Path,
                      failed: list[dict]) -> list[dict]:
    """Start the cloud in its namespace, then every point at every rate (and unshaped if asked).

    Points that fail are appended to ``failed`` and skipped.
    """
    log = (workdir / "cloud.log").open("wb")
    server = subprocess.Popen(
        link.cloud.argv([*_splitfc_argv(), "cloud", "serve", "--host", link.cloud.addr, "--insecure",
                         "--grpc-port", str(GRPC_PORT), "--http-port", str(HTTP_PORT), "--preset", args.preset,
                         "--splits", args.split]),
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SPLITFC_CLOUD_LOG_REQUESTS": "false"},
    )
    driver = None
    try:
        _wait_ready(link, server, workdir / "cloud.log", args.ready_timeout)
        driver = EdgeDriver(link, args, workdir / "edge.log")
        rows = []
        for rate in [None, *args.rate_mbit] if args.unshaped else args.rate_mbit:
            if rate is None:
                link.unshape()
            else:
                link.shape(rate, args.delay_ms, args.loss_pct)
            for point in points:
                try:
                    row = measure_point(link, point, driver)
                except SplitfcError as exc:  # one bad point does not cost the others
                    failed.append({"rate_mbit": rate or 0.0, "point": point.label, "error": str(exc)})
                    print(f"netbench: {exc}", file=sys.stderr, flush=True)
                    continue
                rows.append(row)
                _print_row(row)
        add_speedups(rows)
        return rows
    finally:
        if driver is not None:
            driver.close()
        _stop(server, timeout=30)
        log.close()


def _print_row(row: dict) -> None:
    rate = f"{row['rate_mbit']:g} Mbit/s" if row["rate_mbit"] else "unshaped"
    print(f"{rate:>12}  {row['point']:<14} {row['bitstream_bytes']:>10.0f} B/req  "
          f"wire {row['wire_up_bytes_per_request']:>10.0f} B/req (x{row['wire_over_expected']:.3f} of payload+overhead)"
          f"  latency {row['latency_ms_mean']:8.1f} ms", flush=True)


# ------------------------------------------------------------------------- command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "netbench",
        help="real transmission cost: edge and cloud in two network namespaces over a tc-shaped veth link (root)",
        description="Bytes on the wire (veth counters), transfer time, end-to-end latency and the speed-up over "
                    "raw float32/float16 features per codec point and link rate. Needs root; skips otherwise.",
    )
    p.add_argument("--rate-mbit", type=float, action="append",
                   help="link rate in Mbit/s, shaped with tbf in both directions (repeatable; default 10)")
    p.add_argument("--point", action="append",
                   help="codec point: raw-f32, raw-f16 or CODEC:RATE such as vvenc:32 (repeatable; default: raw "
                        "float32/float16 and the available vvenc/hevc/hyperprior at two rate points)")
    p.add_argument("--split", default="dinov2-dpt",
                   help="split id (default dinov2-dpt, the largest tiny-preset features: 2x4x81x128)")
    p.add_argument("--preset", default="tiny", help="model preset of both sides (default tiny)")
    p.add_argument("--samples", type=int, default=8, help="requests per point and rate (default 8)")
    p.add_argument("--unshaped", action="store_true", help="also run every point on the unshaped link")
    p.add_argument("--delay-ms", type=float, help="added round-trip delay (needs the kernel's netem qdisc)")
    p.add_argument("--loss-pct", type=float, help="random loss in percent (needs the kernel's netem qdisc)")
    p.add_argument("--tcp-probe", type=int, metavar="BYTES",
                   help="send BYTES over plain TCP instead of running splitfc (checks the link and the counting)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the cloud to load")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.set_defaults(func=cmd_netbench)


def cmd_netbench(args: argparse.Namespace) -> int:
    args.rate_mbit = args.rate_mbit or [10.0]
    if any(r <= 0 for r in args.rate_mbit):
        raise SplitfcError("--rate-mbit must be positive")
    if args.samples < 1:
        raise SplitfcError("--samples must be >= 1")
    points = [Point.parse(p) for p in (args.point or ([] if args.tcp_probe else default_points()))]
    reason = namespaces_unavailable_reason()
    if reason is not None:
        print(f"splitfc netbench: skipped: {reason}")
        return 0
    result: dict = {"rates_mbit": args.rate_mbit, "delay_ms": args.delay_ms, "loss_pct": args.loss_pct}
    with _signals_raise(), VethLink() as link, tempfile.TemporaryDirectory(prefix="splitfc-netbench-") as tmp:
        print(f"netbench: {link.edge.ns} ({link.edge.addr}) <-> {link.cloud.ns} ({link.cloud.addr}) over "
              f"{link.edge.dev}/{link.cloud.dev}", flush=True)
        # Refuse delay/loss before any work when the kernel cannot do them.
        link.shape(args.rate_mbit[0], args.delay_ms, args.loss_pct)
        if args.tcp_probe:
            if args.tcp_probe < 1:
                raise SplitfcError("--tcp-probe needs a positive byte count")
            rows = []
            for rate in args.rate_mbit:
                link.shape(rate, args.delay_ms, args.loss_pct)
                row = tcp_probe(link, args.tcp_probe)
                rows.append(row)
                print(f"tcp {rate:g} Mbit/s: {row['payload_bytes']} B payload -> {row['wire_bytes']} B on the wire "
                      f"in {row['wire_packets']} packets (x{row['wire_over_expected']:.4f} of payload + headers), "
                      f"{row['seconds'] * 1e3:.1f} ms, {row['wire_mbit_per_s']:.2f} Mbit/s", flush=True)
            result["tcp_probe"] = rows
        else:
            result.update(split=args.split, preset=args.preset, samples=args.samples)
            result["failed"] = []
            result["rows"] = run_splitfc_bench(link, args, points, Path(tmp), result["failed"])
            _print_speedups(result["rows"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("failed") else 0


def _print_speedups(rows: list[dict]) -> None:
    for r in rows:
        if r["rate_mbit"] and r.get("speedup_vs_raw_f32") is not None:
            f16 = r.get("speedup_vs_raw_f16")
            print(f"{r['rate_mbit']:g} Mbit/s {r['point']:<14} speed-up vs raw float32 x{r['speedup_vs_raw_f32']:.2f} "
                  f"(bytes/bandwidth predicts x{r['predicted_speedup_vs_raw_f32']:.2f})"
                  + (f", vs raw float16 x{f16:.2f} (predicts x{r['predicted_speedup_vs_raw_f16']:.2f})" if f16 else ""))
