"""`splitfc netbench` (`splitfc.netbench`): namespaces, tc shaping, wire-byte counting (root only; else skips)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitfc.cli import main
from splitfc.netbench import namespaces_unavailable_reason
from splitfc.netbench.link import Counters
from splitfc.netbench.measure import RAW_POINTS, point_row

REASON = namespaces_unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"netbench: {REASON}")


def _our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(("sfc-edge-", "sfc-cloud-"))]


def _netbench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "splitfc", "netbench", *args],
                          capture_output=True, text=True, timeout=600)


def test_not_root_skips_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["netbench", "--tcp-probe", "1000"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["splitfc netbench: skipped: network namespaces need root "
                   "(run as root, or in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN)"]


def test_bad_point_is_one_line_error() -> None:
    res = _netbench("--point", "raw-f64")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "splitfc: error: bad point 'raw-f64': use raw-f32, raw-f16 or CODEC:RATE (e.g. vvenc:32)"]


def _request(bitstream: int, payload: int) -> dict:
    return {"bitstream_bytes": bitstream, "payload_bytes": payload, "bpfp": 1.0, "wire_bytes": bitstream + 10,
            "head_ms": 2.0, "encode_ms": 1.0, "server_timing": {"decode_ms": 3.0, "tail_ms": 4.0}, "total_ms": 20.0,
            "attempts": 1}


def test_overhead_is_counted_bytes_minus_bitstream_bytes() -> None:
    # Two requests of 1000 B bitstreams (900 B payload); the veth counted 2600 B up and 500 B down.
    report = {"requests": [_request(1000, 900), _request(1000, 900)], "summary": {"agreement": None}}
    row = point_row(RAW_POINTS["raw-f32"], report, Counters(2600, 6, 500, 4), 10.0)
    assert row["wire_up_bytes_per_request"] == 1300
    assert row["wire_overhead_bytes_per_request"] == 300
    assert row["wire_over_bitstream"] == 1.3
    assert row["wire_over_payload"] == 2600 / 1800
    assert row["transfer_ms"] == (1300 + 250) * 8 / 10e6 * 1e3
    assert row["head_encode_ms_mean"] == 3.0 and row["server_compute_ms_mean"] == 7.0
    assert row["network_ms_mean"] == 10.0


@needs_netns
def test_tcp_probe_at_10_mbit_counts_wire_bytes(tmp_path: Path) -> None:
    out = tmp_path / "tcp.json"
    res = _netbench("--tcp-probe", "600000", "--rate-mbit", "10", "--json", str(out))
    assert res.returncode == 0, res.stderr
    row = json.loads(out.read_text())["tcp_probe"][0]
    assert row["received_bytes"] == 600_000
    # Every frame is at most one MTU (GSO off), so the count is payload + 66 B of headers per frame
    # (Ethernet 14 + IPv4 20 + TCP 32 with timestamps): what the counters say, not what the code assumes.
    assert row["wire_packets"] >= 600_000 / 1448
    assert row["overhead_bytes"] == row["wire_bytes"] - 600_000
    assert abs(row["wire_bytes"] - (600_000 + 66 * row["wire_packets"])) <= 64
    assert 1.0 < row["wire_over_payload"] < 1.05
    # tbf holds the rate: transfer time matches wire bytes / 10 Mbit/s within 20 %.
    predicted = row["wire_bytes"] * 8 / 10e6
    assert abs(row["seconds"] - predicted) / predicted < 0.2
    assert _our_namespaces() == []


@needs_netns
def test_delay_without_netem_is_refused_and_cleaned_up(tmp_path: Path) -> None:
    res = _netbench("--tcp-probe", "10000", "--delay-ms", "20", "--json", str(tmp_path / "d.json"))
    if res.returncode == 0:  # a kernel with netem: the delay is applied, so the transfer takes >= one RTT
        row = json.loads((tmp_path / "d.json").read_text())["tcp_probe"][0]
        assert row["seconds"] >= 0.02
    else:
        assert res.returncode == 2
        assert res.stderr.strip().splitlines() == [
            "splitfc: error: --delay-ms/--loss-pct need the netem qdisc, which this kernel does not have "
            "(rate shaping with tbf works without them)"]
    assert _our_namespaces() == []


@needs_netns
@pytest.mark.slow
def test_splitfc_over_a_10_mbit_link(tmp_path: Path) -> None:
    out = tmp_path / "nb.json"
    res = _netbench("--point", "raw-f32", "--point", "raw-f16", "--samples", "3", "--rate-mbit", "10",
                    "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["point"]: r for r in json.loads(out.read_text())["rows"]}
    f32, f16 = rows["raw-f32"], rows["raw-f16"]
    for r in (f32, f16):
        assert r["requests"] == 3 and r["retried_requests"] == 0
        # Counted on the veth: the bitstream plus at least 66 B of headers per frame sent, and the
        # overhead (counted - bitstream) a few percent of the bitstream at these sizes.
        assert r["wire_up_bytes"] - 3 * r["bitstream_bytes"] >= 66 * r["wire_up_packets"]
        overhead = r["wire_up_bytes_per_request"] - r["bitstream_bytes"]
        assert r["wire_overhead_bytes_per_request"] == pytest.approx(overhead)
        assert 1.0 < r["wire_over_bitstream"] < 1.1
    # The real edge scored its answers against the uncompressed reference: raw float32 is lossless.
    assert f32["agreement"] == {"metric": "RMSE", "value": pytest.approx(0.0, abs=1e-6)}
    # float16 halves the payload: the bitstream is half the size (+ the same header), the wire nearly so.
    assert f16["payload_bytes"] * 2 == f32["payload_bytes"]
    assert 0.45 < f16["wire_up_bytes"] / f32["wire_up_bytes"] < 0.55
    # The end-to-end speed-up matches what bytes / bandwidth predicts within 20 %.
    assert f16["speedup_vs_raw_f32"] > 1.2
    assert abs(f16["speedup_vs_raw_f32"] / f16["predicted_speedup_vs_raw_f32"] - 1) < 0.2
    assert f32["speedup_vs_raw_f32"] == 1.0
    assert _our_namespaces() == []


@needs_netns
def test_sigterm_mid_run_removes_the_namespaces() -> None:
    argv = [sys.executable, "-m", "splitfc", "netbench", "--tcp-probe", "20000000", "--rate-mbit", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the link exists
        assert first.startswith("netbench: sfc-edge-")
        assert len(_our_namespaces()) == 2
        time.sleep(1.0)  # inside the transfer (20 MB at 1 Mbit/s would take minutes)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _our_namespaces() == []
