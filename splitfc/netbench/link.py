"""Two network namespaces joined by a veth pair, shaped with ``tc``; removed again whatever happens.

Edge ``sfc-edge-<tag>`` (10.251.0.1) and cloud ``sfc-cloud-<tag>`` (10.251.0.2), the veth pair
created directly inside them (no device ever exists in the caller's namespace). GSO is off
(``gso_max_segs 1``) so every counted packet is one wire-sized frame, as on a real link. The
byte counters (`VethLink.counters`) are the interface's own (``ip -s link``: whole L2 frames).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from splitfc.common.errors import SplitfcError

EDGE_ADDR = "10.251.0.1"
CLOUD_ADDR = "10.251.0.2"
PREFIX_LEN = 30
MTU = 1500
NAMESPACE_PREFIXES = ("sfc-edge-", "sfc-cloud-")


class NetemUnavailable(SplitfcError):
    """Delay or loss was asked for but the kernel has no netem qdisc."""


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
    """Interface counters of one veth end (bytes are whole L2 frames: Ethernet + IP + TCP + data)."""

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


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise SplitfcError(f"{' '.join(argv)} failed: {' '.join(res.stderr.split())}")


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

    def _create(self) -> None:
        for end in (self.edge, self.cloud):
            _run(["ip", "netns", "add", end.ns])
            self.created.append(end.ns)
        _run(["ip", "-n", self.edge.ns, "link", "add", self.edge.dev, "type", "veth",
              "peer", "name", self.cloud.dev, "netns", self.cloud.ns])
        for end in (self.edge, self.cloud):
            _run(["ip", "-n", end.ns, "addr", "add", f"{end.addr}/{PREFIX_LEN}", "dev", end.dev])
            _run(["ip", "-n", end.ns, "link", "set", end.dev, "mtu", str(MTU), "gso_max_segs", "1", "up"])
            _run(["ip", "-n", end.ns, "link", "set", "lo", "up"])

    def remove(self) -> None:
        """Delete the namespaces (and with them the veth pair); idempotent."""
        while self.created:
            _ip("netns", "del", self.created.pop(), check=False)

    def exists(self) -> bool:
        names = _ip("netns", "list", check=False).stdout
        return any(line.split()[:1] in ([self.edge.ns], [self.cloud.ns]) for line in names.splitlines())

    def counters(self, end: End) -> Counters:
        """The interface byte and packet counters of ``end``'s veth device, read inside its namespace."""
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
            _run(["tc", "-n", end.ns, "qdisc", "add", "dev", end.dev, "root", "handle", "1:", "tbf",
                  "rate", f"{int(rate_mbit * 1e6)}bit", "burst", str(burst), "limit", str(limit)])
            if delay_ms or loss_pct:
                self._netem(end, delay_ms, loss_pct)
        self.rate_mbit = rate_mbit

    @staticmethod
    def _netem(end: End, delay_ms: float | None, loss_pct: float | None) -> None:
        netem = ["tc", "-n", end.ns, "qdisc", "add", "dev", end.dev, "parent", "1:1", "handle", "10:", "netem"]
        if delay_ms:
            netem += ["delay", f"{delay_ms / 2:g}ms"]  # half each way: delay_ms is the round trip
        if loss_pct:
            netem += ["loss", f"{loss_pct:g}%"]
        res = subprocess.run(netem, capture_output=True, text=True)
        if res.returncode == 0:
            return
        if "unknown" in res.stderr.lower() or "no such file" in res.stderr.lower():
            raise NetemUnavailable(
                "--delay-ms/--loss-pct need the netem qdisc, which this kernel does not have "
                "(rate shaping with tbf works without them)"
            )
        raise SplitfcError(f"tc netem failed: {' '.join(res.stderr.split())}")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit(128 + signal) for the duration, so cleanup code runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it already exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
