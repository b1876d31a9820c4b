"""The locust run's summary, in the terms of ``splitfc bench-serving``: throughput, p50/p99, batch sizes.

Kept apart from the locustfile (which patches gRPC for gevent when imported) so that it can be
tested and reused. The batch sizes are the cloud's own count of the tail batches it ran
(``splitfc_cloud_tail_batches_total``, read from its Prometheus ``/metrics`` before and after the
run by `splitfc.cli.bench_serving.tail_batches` and differenced by ``batch_stats``): what the
server saw, not what the clients sent.
"""

from __future__ import annotations

from typing import Any

from splitfc.cli.bench_serving import batch_stats, tail_batches

__all__ = ["batch_stats", "format_summary", "read_batches", "summarize", "tail_batches"]


def read_batches(metrics_url: str, splits: list[str]) -> dict[str, dict[int, float]]:
    """{split: {tail batch size: batches run so far}} from the cloud's ``metrics_url``.

    Raises ``OSError`` (``urllib.error.URLError``) when the endpoint cannot be read.
    """
    return {split: tail_batches(metrics_url, split) for split in splits}


def _entry_row(entry: Any) -> dict[str, Any]:
    """One locust `StatsEntry` -> requests, failures, ok throughput (requests/s) and p50/p99 (ms).

    Throughput counts successful requests over the entry's span (first request to last answer),
    as locust's own RPS column does for all requests. Percentiles are locust's (rounded to two
    significant digits above 100 ms); None without requests.
    """
    requests, failures = int(entry.num_requests), int(entry.num_failures)
    span = float(entry.last_request_timestamp or 0) - float(entry.start_time or 0)
    ok = requests - failures
    return {
        "requests": requests,
        "failures": failures,
        "throughput_rps": ok / span if span > 0 and ok > 0 else 0.0,
        "p50_ms": entry.get_response_time_percentile(0.5) if requests else None,
        "p99_ms": entry.get_response_time_percentile(0.99) if requests else None,
    }


def summarize(
    stats: Any, split_of: dict[str, str], before: dict[str, dict[int, float]] | None,
    after: dict[str, dict[int, float]] | None,
) -> dict[str, Any]:
    """The run's summary from locust's `RequestStats` and two `read_batches` reads.

    ``split_of`` maps a locust request name to its split. Returns ``{"total": row, "splits":
    {split: row}}``, each row as `_entry_row` plus, where both reads exist, ``batch_sizes``
    ({size: batches}), ``batch_mean`` and ``batch_max`` of that split (`batch_stats`; None when no
    batch ran). Without the reads (no metrics URL) the batch fields are absent.
    """
    rows: dict[str, dict[str, Any]] = {}
    for (name, _method), entry in sorted(stats.entries.items()):
        split = split_of.get(name)
        if split is not None:
            rows[split] = _entry_row(entry)
    if before is not None and after is not None:
        for split, row in rows.items():
            row.update(batch_stats(after.get(split, {}), before.get(split, {})))
    return {"total": _entry_row(stats.total), "splits": rows}


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text lines, one per split and one for all: throughput, p50/p99, the batch sizes seen."""

    def line(label: str, row: dict[str, Any]) -> str:
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}"
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.0f}"
        text = (f"{label:<12} {row['requests']:>6} req  {row['failures']:>4} failed  "
                f"{row['throughput_rps']:8.1f} req/s  p50 {p50} ms  p99 {p99} ms")
        if "batch_sizes" in row:
            sizes = " ".join(f"{k}:{v}" for k, v in row["batch_sizes"].items()) or "none"
            mean = "-" if row["batch_mean"] is None else f"{row['batch_mean']:.2f}"
            text += f"  tail batches (size:count) {sizes}  mean {mean}  max {row['batch_max'] or '-'}"
        return text

    out = [line(split, row) for split, row in summary["splits"].items()]
    out.append(line("all", summary["total"]))
    if not any("batch_sizes" in row for row in summary["splits"].values()):
        out.append("batch sizes not read: set SPLITFC_LOADTEST_METRICS_URL (the cloud's /metrics URL)")
    return "\n".join(out)
