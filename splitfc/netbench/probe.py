"""Plain TCP over the link: checks the shaping and the counting without gRPC or splitfc in the way.

A receiver in the cloud namespace, a sender in the edge namespace; the sender's interface counters
around the transfer give the bytes and frames on the wire. ``overhead_bytes`` is what the wire
carried beyond the payload (frame headers, handshake, FIN, ACKs), counted, not assumed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from splitfc.common.errors import SplitfcError
from splitfc.netbench.link import VethLink, stop_process

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
    """Send ``nbytes`` over plain TCP edge -> cloud; wire bytes and frames from the edge veth's counters."""
    if nbytes < 1:
        raise SplitfcError("--tcp-probe needs a positive byte count")
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
        stop_process(receiver)
    seconds = float(sender.stdout.strip())
    overhead = delta.tx_bytes - nbytes
    return {
        "payload_bytes": nbytes,
        "received_bytes": received,
        "wire_bytes": delta.tx_bytes,
        "wire_packets": delta.tx_packets,
        "wire_bytes_back": delta.rx_bytes,
        "wire_packets_back": delta.rx_packets,
        "overhead_bytes": overhead,
        "overhead_bytes_per_packet": overhead / delta.tx_packets if delta.tx_packets else 0.0,
        "wire_over_payload": delta.tx_bytes / nbytes,
        "seconds": seconds,
        "wire_mbit_per_s": delta.tx_bytes * 8 / seconds / 1e6,
        "rate_mbit": link.rate_mbit or 0.0,
    }


def format_probe(row: dict[str, float | int]) -> str:
    """One line of a probe result."""
    return (f"tcp {row['rate_mbit']:g} Mbit/s: {row['payload_bytes']} B payload -> {row['wire_bytes']} B on the wire "
            f"in {row['wire_packets']} frames ({row['overhead_bytes']} B over the payload, "
            f"{row['overhead_bytes_per_packet']:.1f} B/frame), {row['seconds'] * 1e3:.1f} ms, "
            f"{row['wire_mbit_per_s']:.2f} Mbit/s")
