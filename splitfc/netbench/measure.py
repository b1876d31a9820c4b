"""One codec point over the link: the interface counters around a real edge run, and what they say.

Every figure about bytes on the wire comes from the edge veth's counters (`VethLink.counters`:
whole L2 frames, both directions); every figure about the request comes from the edge's own
report (`run_edge`). Wire overhead is their difference: counted bytes up minus the bitstream bytes
the edge handed to gRPC. Nothing is estimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.netbench.driver import EdgeDriver
from splitfc.netbench.link import Counters, VethLink


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
    "raw-f32": Point("raw-f32", "raw", 0),  # the registered raw codec: float32 stays float32
    "raw-f16": Point("raw-f16", "raw", 0, "float16"),
}


def default_points() -> list[str]:
    """raw float32/float16, then every available frame/learned codec at two of its rate points."""
    from splitfc.common.codecs import CODECS

    points = ["raw-f32", "raw-f16"]
    for name in ("vvenc", "hevc", "hyperprior", "native"):
        cls = CODECS.get(name)
        if cls is None or cls.unavailable_reason() is not None or not cls.rates:
            continue
        rates = sorted(set(cls.rates))
        picks = [rates[len(rates) // 3], rates[-1]] if len(rates) > 1 else rates
        points += [f"{name}:{r}" for r in dict.fromkeys(picks)]
    return points


def measure_point(link: VethLink, point: Point, driver: EdgeDriver) -> dict[str, Any]:
    """One point: the edge veth's counters around one edge run, plus that run's own report.

    One run of one request first, not counted: the codec's first-use costs (checkpoint load,
    caches) on both sides stay out of the numbers.
    """
    try:
        driver.run(point.codec, point.qp, point.raw_dtype, limit=1)
        time.sleep(0.2)
        before = link.counters(link.edge)
        report = driver.run(point.codec, point.qp, point.raw_dtype)
        time.sleep(0.3)  # trailing ACKs and the connection's close
        delta = link.counters(link.edge) - before
    except SplitfcError as exc:
        raise SplitfcError(f"point {point.label} failed: {exc}") from None
    return point_row(point, report, delta, link.rate_mbit)


def point_row(point: Point, report: dict[str, Any], delta: Counters, rate_mbit: float | None) -> dict[str, Any]:
    """The figures of one point from the edge's report and the counter deltas around it."""
    reqs = report["requests"]
    n = len(reqs)

    def mean(key: str) -> float:
        return sum(r[key] for r in reqs) / n

    bitstream_total = sum(r["bitstream_bytes"] for r in reqs)
    payload_total = sum(r["payload_bytes"] for r in reqs)
    head_encode = [r["head_ms"] + r["encode_ms"] for r in reqs]
    server_compute = [r["server_timing"]["decode_ms"] + r["server_timing"]["tail_ms"] for r in reqs]
    total = [r["total_ms"] for r in reqs]
    up, down = delta.tx_bytes / n, delta.rx_bytes / n
    agreement = report["summary"].get("agreement") or {}
    latency = float(np.mean(total))
    return {
        "rate_mbit": rate_mbit or 0.0,
        "point": point.label,
        "codec": point.codec,
        "qp": point.qp,
        "requests": n,
        "bitstream_bytes": bitstream_total / n,
        "payload_bytes": payload_total / n,
        "bpfp": mean("bpfp"),
        "grpc_message_bytes": mean("wire_bytes"),
        "wire_up_bytes": delta.tx_bytes,
        "wire_up_packets": delta.tx_packets,
        "wire_down_bytes": delta.rx_bytes,
        "wire_down_packets": delta.rx_packets,
        "wire_up_bytes_per_request": up,
        "wire_down_bytes_per_request": down,
        "wire_overhead_bytes_per_request": (delta.tx_bytes - bitstream_total) / n,
        "wire_over_bitstream": delta.tx_bytes / bitstream_total,
        "wire_over_payload": delta.tx_bytes / payload_total if payload_total else None,
        "transfer_ms": (up + down) * 8 / (rate_mbit * 1e6) * 1e3 if rate_mbit else None,
        "latency_ms_mean": latency,
        "latency_ms_p50": float(np.percentile(total, 50)),
        "latency_ms_p95": float(np.percentile(total, 95)),
        "head_ms_mean": mean("head_ms"),
        "encode_ms_mean": mean("encode_ms"),
        "server_decode_ms_mean": float(np.mean([r["server_timing"]["decode_ms"] for r in reqs])),
        "tail_ms_mean": float(np.mean([r["server_timing"]["tail_ms"] for r in reqs])),
        "head_encode_ms_mean": float(np.mean(head_encode)),
        "server_compute_ms_mean": float(np.mean(server_compute)),
        "network_ms_mean": latency - float(np.mean(head_encode)) - float(np.mean(server_compute)),
        "retried_requests": sum(1 for r in reqs if r["attempts"] > 1),
        "agreement": {k: agreement.get(k) for k in ("metric", "value")} if agreement else None,
    }


def ideal_latency_ms(row: dict[str, Any], raw: dict[str, Any]) -> float | None:
    """End-to-end latency (ms) a codec of ``row``'s size that took no time would have on the same link.

    ``row``'s own head and tail times (the same requests, so CPU contention on the head/tail
    cancels), plus raw float32's network time at the same rate less its transfer time (its fixed
    per-request costs: gRPC, TCP, the answer's decoding on the edge), plus ``row``'s transfer time
    (``transfer_ms``: its wire bytes, both directions as counted on the veth, / rate). Coding time
    (edge encode, server decode) is zero. None on an unshaped link (no rate to turn bytes into time).
    """
    if not row["rate_mbit"] or row["transfer_ms"] is None or raw["transfer_ms"] is None:
        return None
    fixed = raw["network_ms_mean"] - raw["transfer_ms"]
    return row["head_ms_mean"] + row["tail_ms_mean"] + fixed + row["transfer_ms"]


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over raw float32/float16 at the same link rate, measured, predicted and ideal.

    Measured: ratio of mean end-to-end latencies (head + encode + request + server + response).
    Predicted: the same with the network part replaced by bytes / bandwidth, i.e. each row's
    measured compute (edge head + encode, server decode + tail) plus its wire bytes (both
    directions, as counted on the veth) / rate.
    Ideal (vs raw float32 only): raw float32's latency over `ideal_latency_ms`, the speed-up a
    zero-time codec of the row's size would give on the same link, head and tail;
    ``speedup_of_ideal`` = measured / ideal = ideal latency / measured latency (issue 15's
    acceptance: at least 0.8 at the codec's ~1 BPFP point).
    """
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
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
            raw = points.get("raw-f32")
            ideal = ideal_latency_ms(r, raw) if raw is not None else None
            r["ideal_latency_ms"] = ideal
            r["ideal_speedup_vs_raw_f32"] = raw["latency_ms_mean"] / ideal if ideal else None
            r["speedup_of_ideal"] = ideal / r["latency_ms_mean"] if ideal else None


def format_row(row: dict[str, Any]) -> str:
    rate = f"{row['rate_mbit']:g} Mbit/s" if row["rate_mbit"] else "unshaped"
    return (f"{rate:>12}  {row['point']:<14} {row['bitstream_bytes']:>10.0f} B/req  "
            f"wire up {row['wire_up_bytes_per_request']:>10.0f} B/req "
            f"(+{row['wire_overhead_bytes_per_request']:.0f} B over the bitstream, x{row['wire_over_bitstream']:.3f})"
            f"  latency {row['latency_ms_mean']:8.1f} ms")


def format_speedups(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r["rate_mbit"] and r.get("speedup_vs_raw_f32") is not None:
            f16 = r.get("speedup_vs_raw_f16")
            lines.append(
                f"{r['rate_mbit']:g} Mbit/s {r['point']:<14} {r['bpfp']:.3f} BPFP "
                f"speed-up vs raw float32 x{r['speedup_vs_raw_f32']:.2f} "
                f"(bytes/bandwidth predicts x{r['predicted_speedup_vs_raw_f32']:.2f})"
                + (f", vs raw float16 x{f16:.2f} (predicts x{r['predicted_speedup_vs_raw_f16']:.2f})" if f16 else "")
                + (f"; a zero-time codec of its size x{r['ideal_speedup_vs_raw_f32']:.2f}, measured/ideal "
                   f"{r['speedup_of_ideal']:.2f}" if r.get("ideal_speedup_vs_raw_f32") else "")
            )
    return lines
