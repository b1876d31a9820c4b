"""`splitfc netbench`'s ideal speed-up: a zero-time codec of the same size on the same link, head and tail.

Pure arithmetic on `point_row` / `add_speedups` (no namespaces, no root): hand-computed figures.
"""

from __future__ import annotations

import pytest

from splitfc.netbench.link import Counters
from splitfc.netbench.measure import RAW_POINTS, Point, add_speedups, format_speedups, ideal_latency_ms, point_row


def _report(n: int, bitstream: int, head: float, encode: float, decode: float, tail: float, total: float) -> dict:
    req = {"bitstream_bytes": bitstream, "payload_bytes": bitstream, "bpfp": 32.0 * bitstream / 331_776,
           "wire_bytes": bitstream + 20, "head_ms": head, "encode_ms": encode,
           "server_timing": {"decode_ms": decode, "tail_ms": tail}, "total_ms": total, "attempts": 1}
    return {"requests": [dict(req) for _ in range(n)], "summary": {"agreement": None}}


def _rows() -> list[dict]:
    # raw float32: a 331,776 B bitstream, 342,000 B up + 2,000 B down on the wire per request at 10 Mbit/s:
    # transfer 275.2 ms; head 20, encode 1, server decode 1, tail 8; latency 330 ms, so 24.8 ms of fixed costs.
    raw = point_row(RAW_POINTS["raw-f32"], _report(2, 331_776, 20.0, 1.0, 1.0, 8.0, 330.0),
                    Counters(2 * 342_000, 500, 2 * 2_000, 100), 10.0)
    # a codec at 1 BPFP: 10,368 B bitstream, 11,000 B up + 2,000 B down: transfer 10.4 ms;
    # encode 6, decode 4; latency 90 ms.
    coded = point_row(Point("native:39", "native", 39), _report(2, 10_368, 20.0, 6.0, 4.0, 8.0, 90.0),
                      Counters(2 * 11_000, 20, 2 * 2_000, 10), 10.0)
    rows = [raw, coded]
    add_speedups(rows)
    return rows


def test_ideal_latency_replaces_raw_bytes_and_drops_coding_time() -> None:
    raw, coded = _rows()
    raw_transfer = (342_000 + 2_000) * 8 / 10e6 * 1e3
    coded_transfer = (11_000 + 2_000) * 8 / 10e6 * 1e3
    assert raw["transfer_ms"] == pytest.approx(raw_transfer)
    fixed = (330.0 - 20.0 - 1.0 - 1.0 - 8.0) - raw_transfer  # raw's network time less its transfer: 24.8 ms
    assert fixed == pytest.approx(24.8)
    ideal = 20.0 + 8.0 + fixed + coded_transfer  # the codec's own head and tail, no coding time
    assert coded["ideal_latency_ms"] == pytest.approx(ideal)
    assert coded["speedup_vs_raw_f32"] == pytest.approx(330.0 / 90.0)
    assert coded["ideal_speedup_vs_raw_f32"] == pytest.approx(330.0 / ideal)
    assert coded["speedup_of_ideal"] == pytest.approx(ideal / 90.0)
    # Same figure as measured speed-up / ideal speed-up.
    assert coded["speedup_of_ideal"] == pytest.approx(coded["speedup_vs_raw_f32"] / coded["ideal_speedup_vs_raw_f32"])
    # Raw itself: only its own coding time (2 ms) separates it from the ideal.
    assert raw["speedup_of_ideal"] == pytest.approx((330.0 - 2.0) / 330.0)
    # A head/tail slower in the codec's requests (CPU contention) moves its ideal by as much.
    busy = [raw, dict(coded, head_ms_mean=30.0, latency_ms_mean=100.0)]
    add_speedups(busy)
    assert busy[1]["ideal_latency_ms"] == pytest.approx(ideal + 10.0)
    assert coded["encode_ms_mean"] == 6.0 and coded["server_decode_ms_mean"] == 4.0 and coded["tail_ms_mean"] == 8.0


def test_the_ratio_falls_when_coding_time_eats_the_saving() -> None:
    raw, coded = _rows()
    slow = [raw, dict(coded, latency_ms_mean=coded["latency_ms_mean"] + 200.0)]  # 200 ms slower, same size
    add_speedups(slow)
    assert slow[1]["ideal_latency_ms"] == pytest.approx(coded["ideal_latency_ms"])  # the ideal ignores coding
    assert coded["speedup_of_ideal"] == pytest.approx(63.2 / 90.0)  # 20 + 8 + 24.8 + 10.4 = 63.2 ms ideal
    assert slow[1]["speedup_of_ideal"] == pytest.approx(coded["ideal_latency_ms"] / 290.0)


def test_unshaped_rows_and_missing_raw_give_none() -> None:
    raw, coded = _rows()
    assert ideal_latency_ms(dict(coded, rate_mbit=0.0, transfer_ms=None), raw) is None
    alone = [dict(coded)]
    add_speedups(alone)
    assert alone[0]["ideal_speedup_vs_raw_f32"] is None and alone[0]["speedup_of_ideal"] is None


def test_the_summary_line_shows_ideal_and_ratio() -> None:
    lines = format_speedups(_rows())
    line = next(x for x in lines if "native:39" in x)
    _, coded = _rows()
    assert f"x{coded['ideal_speedup_vs_raw_f32']:.2f}" in line
    assert f"measured/ideal {coded['speedup_of_ideal']:.2f}" in line
    assert "1.000 BPFP" in line
