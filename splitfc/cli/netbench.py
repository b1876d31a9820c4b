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
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
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
