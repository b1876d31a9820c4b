"""``splitfc edge run``: head, encode, send, receive, score, report.

Per request: ``head`` and ``encode_features`` in a worker thread, then one gRPC
call (`EdgeClient.infer`), then the task result is decoded. Up to
``concurrency`` requests are in flight. The report has one record per request
(a result or an explicit error) and a summary: BPFP, payload and wire bytes,
head/encode/network/server/total latency percentiles, and the split's task
metric against ground truth or, unless every sample has it, against the
uncompressed reference (the unsplit model run locally once, cached on disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitfc import __version__
from splitfc.common.bitstream import bitstream_stats, encode_features
from splitfc.common.codecs import get_codec
from splitfc.common.codecs.raw import RawCodec
from splitfc.common.errors import SplitfcError
from splitfc.common.models.base import Sample, SplitModel, TaskOutput
from splitfc.common.specs import get_split
from splitfc.common.wire import task_result_from_proto
from splitfc.edge.client import EdgeClient
from splitfc.edge.settings import EdgeSettings

LATENCY_STAGES = ("head", "encode", "network", "server", "total")


@dataclass
class EdgeRunConfig:
    """What one ``edge run`` does."""

    server: str
    split: str
    codec: str
    qp: int = 0
    samples: int = 8
    preset: str = "tiny"
    data: Path | None = None
    concurrency: int = 1
    deadline_s: float | None = None
    raw_dtype: str | None = None
    """``raw`` codec only: the stored dtype (float32, float16, bfloat16); None keeps the features' dtype."""


@dataclass
class RequestReport:
    """One request: a result, or an explicit error (``status`` != "OK")."""

    request_id: str
    sample_id: str
    status: str = "OK"
    error: str = ""
    attempts: int = 0
    chunked: bool = False
    bpfp: float | None = None
    payload_bytes: int | None = None
    bitstream_bytes: int | None = None
    wire_bytes: int | None = None
    head_ms: float | None = None
    encode_ms: float | None = None
    network_ms: float | None = None
    server_ms: float | None = None
    total_ms: float | None = None
    server_timing: dict[str, float] = field(default_factory=dict)
    prediction: Any = None
    """Compact view of the task output (label/letter; shape for arrays)."""



def decode_response(resp: Any) -> TaskOutput:
    """`task_result_from_proto` for an untrusted response: anything malformed is a `SplitfcError`."""
    res = resp.result
    try:
        return task_result_from_proto(res)
    except SplitfcError:
        raise
    except Exception as exc:  # a malformed response is this request's error, never the run's
        raise SplitfcError(f"malformed task result: {type(exc).__name__}: {exc}") from None


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/mean/max of a list (None when empty); linear interpolation."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()), "max": float(a.max()),
    }


def prediction_summary(out: TaskOutput) -> Any:
    """Compact view of one task output (its task's `Task.summary`)."""
    from splitfc.common.tasks import get_task

    return get_task(out.task).summary(out)


class ReferenceCache:
    """Uncompressed reference outputs (``forward_unsplit``), computed once and kept as .npz files.

    The key is the sample id plus a digest of the head's features, so a changed model or input
    misses the cache instead of reading a stale reference.
    """

    def __init__(self, root: Path, preset: str, split: str) -> None:
        self.dir = Path(root) / f"v{__version__}" / preset / split

    def path(self, sample_id: str, digest: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
        return self.dir / f"{safe}-{digest}.npz"

    def get(self, sample_id: str, digest: str) -> TaskOutput | None:
        path = self.path(sample_id, digest)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in TaskOutput.ARRAY_FIELDS if k in z.files}
        except (OSError, ValueError, KeyError):
            return None
        return TaskOutput(task=meta["task"], label=meta["label"], choices=meta["choices"], **arrays)

    def put(self, sample_id: str, digest: str, out: TaskOutput) -> None:
        meta = json.dumps({"task": out.task, "label": out.label, "choices": list(out.choices)})
        arrays = {k: np.asarray(getattr(out, k)) for k in TaskOutput.ARRAY_FIELDS if getattr(out, k) is not None}
        path = self.path(sample_id, digest)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
            np.savez(tmp, meta=np.asarray(meta), **arrays)
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs recomputation

    def reference(self, model: SplitModel, sample: Sample, digest: str) -> TaskOutput:
        cached = self.get(sample.id, digest)
        if cached is not None:
            return cached
        out = model.forward_unsplit(sample.inputs)
        self.put(sample.id, digest, out)
        return out


def load_model_and_samples(config: EdgeRunConfig) -> tuple[SplitModel, list[Sample]]:
    """The split model of the preset and ``config.samples`` inputs: the preset's offline samples
    (`splitfc.common.models.preset_samples`: built-in ones, real labeled ones for ``small`` CSR/Cls), or the
    split's paper data set under ``config.data`` (`splitfc.common.data.load_samples`)."""
    from splitfc.common.models import get_split_model

    model = get_split_model(config.split, preset=config.preset)
    if config.data is not None:
        from splitfc.common.data import load_samples

        samples = list(load_samples(config.split, config.data, config.samples))
    else:
        from splitfc.common.models import preset_samples

        samples = list(preset_samples(config.split, config.samples, config.preset))
    if not samples:
        raise SplitfcError("no samples to run")
    return model, samples


def score(split: str, outputs: list[TaskOutput], references: list[Any]) -> dict[str, Any]:
    """`splitfc.common.metrics.score_outputs`, with a failure (e.g. FID unavailable) as ``error``."""
    from splitfc.common.metrics import score_outputs

    try:
        return dict(score_outputs(split, outputs, references))
    except (SplitfcError, ValueError) as exc:
        from splitfc.common.tasks import get_task

        task = get_task(get_split(split).task)
        return {"metric": task.metric, "value": None, "higher_is_better": task.higher_is_better,
                "samples": len(outputs), "error": str(exc)}


async def run_edge(
    config: EdgeRunConfig,
    settings: EdgeSettings | None = None,
    model: SplitModel | None = None,
    samples: Sequence[Sample] | None = None,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """Run the edge for ``config``; return the report (JSON-able dict)."""
    settings = settings or EdgeSettings()
    spec = get_split(config.split, config.preset)  # the preset's truncation ranges (small: its own)
    codec = RawCodec(store_dtype=config.raw_dtype) if config.codec == "raw" else get_codec(config.codec)
    if config.raw_dtype is not None and config.codec != "raw":
        raise SplitfcError(f"raw_dtype applies to the raw codec only, not {config.codec}")
    codec.require_available()
    if codec.rate_name != "none":
        codec.check_rate(config.qp)
    if config.concurrency < 1:
        raise SplitfcError("--concurrency must be >= 1")
    if model is None or samples is None:
        model, loaded = load_model_and_samples(config)
        samples = samples if samples is not None else loaded
    samples = list(samples)
    log = logger or logging.getLogger("splitfc.edge.requests")
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="splitfc-edge")
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(config.concurrency)
    outputs: dict[int, TaskOutput] = {}
    digests: dict[int, str] = {}
    head_lock = threading.Lock()

    def head_and_encode(index: int, sample: Sample) -> tuple[bytes, dict[str, Any], float, float]:
        t0 = time.perf_counter()
        with head_lock:  # models need not be thread-safe (e.g. a diffusion scheduler's step counter)
            features = model.head(sample.inputs)
        t1 = time.perf_counter()
        msg = encode_features(features, spec, codec, config.qp)
        data = msg.SerializeToString()
        t2 = time.perf_counter()
        digests[index] = hashlib.sha256(memoryview(np.ascontiguousarray(features)).cast("B")).hexdigest()[:16]
        return data, bitstream_stats(msg).as_dict(), t1 - t0, t2 - t1

    async def one(index: int, sample: Sample, client: EdgeClient) -> RequestReport:
        rep = RequestReport(request_id=uuid.uuid4().hex, sample_id=str(sample.id))
        async with sem:
            t0 = time.perf_counter()
            try:
                data, stats, head_s, enc_s = await loop.run_in_executor(pool, head_and_encode, index, sample)
            except Exception as exc:  # any failure of head or codec is this request's error, not the run's
                rep.status = "ENCODE_ERROR"
                rep.error = str(exc) if isinstance(exc, SplitfcError) else f"{type(exc).__name__}: {exc}"
                _log(log, config, rep)
                return rep
            rep.head_ms, rep.encode_ms = head_s * 1e3, enc_s * 1e3
            rep.bpfp, rep.payload_bytes, rep.bitstream_bytes = stats["bpfp"], stats["payload_bits"] // 8, len(data)
            call = await client.infer(rep.request_id, data, config.deadline_s)
            rep.attempts, rep.chunked, rep.wire_bytes = call.attempts, call.chunked, call.wire_bytes
            if call.response is None:
                rep.status, rep.error = call.code.name, call.details
                rep.total_ms = (time.perf_counter() - t0) * 1e3
                _log(log, config, rep)
                return rep
            resp = call.response
            timing = resp.timing
            rep.server_timing = {
                "queue_ms": timing.queue_ms, "decode_ms": timing.decode_ms, "tail_ms": timing.tail_ms,
                "total_ms": timing.total_ms,
            }
            rep.server_ms = timing.total_ms
            rep.network_ms = max(0.0, call.rtt_s * 1e3 - timing.total_ms)
            try:
                out = decode_response(resp)
            except SplitfcError as exc:
                rep.status, rep.error = "BAD_RESPONSE", str(exc)
            else:
                outputs[index] = out
                rep.prediction = prediction_summary(out)
            rep.total_ms = (time.perf_counter() - t0) * 1e3
            _log(log, config, rep)
            return rep

    t_run = time.perf_counter()
    try:
        async with EdgeClient(config.server, settings) as client:
            records = await asyncio.gather(*(one(i, s, client) for i, s in enumerate(samples)))
    finally:
        pool.shutdown(wait=False)
    wall_s = time.perf_counter() - t_run

    # The task metric: against ground truth when every sample has it, else against the
    # uncompressed reference (the unsplit model, run here once per input and cached on disk).
    # ``agreement`` is always the latter: what coding and transport cost in task terms.
    cache = ReferenceCache(settings.cache_dir, config.preset, config.split)
    ok = sorted(outputs)
    metric: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None
    if ok:
        outs = [outputs[i] for i in ok]
        refs = [await loop.run_in_executor(None, cache.reference, model, samples[i], digests[i]) for i in ok]
        agreement = score(config.split, outs, refs)
        targets = [samples[i].target for i in ok]
        metric = score(config.split, outs, targets) if all(t is not None for t in targets) else agreement
    return build_report(config, list(records), wall_s, metric, agreement)


def build_report(
    config: EdgeRunConfig, records: list[RequestReport], wall_s: float,
    metric: dict[str, Any] | None, agreement: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON report: config, summary (rates, latency percentiles, metric) and every request."""
    good = [r for r in records if r.status == "OK"]
    errors: dict[str, int] = {}
    for r in records:
        if r.status != "OK":
            errors[r.status] = errors.get(r.status, 0) + 1
    latency = {
        stage: percentiles([getattr(r, f"{stage}_ms") for r in good if getattr(r, f"{stage}_ms") is not None])
        for stage in LATENCY_STAGES
    }
    summary = {
        "requests": len(records),
        "ok": len(good),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "wall_s": wall_s,
        "throughput_rps": len(good) / wall_s if wall_s > 0 else None,
        "bpfp_mean": float(np.mean([r.bpfp for r in good])) if good else None,
        "payload_bytes_mean": float(np.mean([r.payload_bytes for r in good])) if good else None,
        "payload_bytes_total": int(sum(r.payload_bytes or 0 for r in good)),
        "wire_bytes_mean": float(np.mean([r.wire_bytes for r in good])) if good else None,
        "wire_bytes_total": int(sum(r.wire_bytes or 0 for r in good)),
        "chunked_requests": sum(1 for r in good if r.chunked),
        "retried_requests": sum(1 for r in records if r.attempts > 1),
        "latency_ms": latency,
        "metric": metric,
        "agreement": agreement,
    }
    cfg = asdict(config)
    cfg["data"] = str(config.data) if config.data is not None else None
    return {"config": cfg, "summary": summary, "requests": [asdict(r) for r in records]}


def _log(log: logging.Logger, config: EdgeRunConfig, rep: RequestReport) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "side": "edge", "event": "request", "request_id": rep.request_id, "sample_id": rep.sample_id,
        "split": config.split, "codec": config.codec, "qp": config.qp, "status": rep.status,
        "bpfp": rep.bpfp, "payload_bytes": rep.payload_bytes, "bitstream_bytes": rep.bitstream_bytes,
        "wire_bytes": rep.wire_bytes, "attempts": rep.attempts,
    }
    for stage in LATENCY_STAGES:
        value = getattr(rep, f"{stage}_ms")
        if value is not None:
            fields[f"{stage}_ms"] = round(value, 3)
    if rep.error:
        fields["error"] = rep.error
    log.info("", extra={"fields": fields})


def format_summary(report: dict[str, Any]) -> str:
    """A few human-readable lines of a report."""
    c, s = report["config"], report["summary"]
    lat = s["latency_ms"]

    def ms(stage: str, p: str) -> str:
        v = lat[stage][p]
        return "-" if v is None else f"{v:.1f}"

    m = s["metric"] or {"metric": "metric", "value": None, "reference": "-"}
    metric = "-" if m.get("value") is None else f"{m['value']:.4f}"
    lines = [
        f"split {c['split']}  codec {c['codec']}  qp {c['qp']}  preset {c['preset']}  concurrency {c['concurrency']}",
        f"requests {s['requests']}  ok {s['ok']}  errors {s['errors']} {s['errors_by_status'] or ''}".rstrip(),
        f"BPFP {s['bpfp_mean']:.4f}  payload {s['payload_bytes_mean']:.0f} B  wire {s['wire_bytes_mean']:.0f} B"
        if s["ok"] else "BPFP -",
        f"{m['metric']} {metric} (vs {m.get('reference', '-')})" + (f"  [{m['error']}]" if m.get("error") else ""),
        "latency ms      p50     p95     p99",
    ]
    for stage in LATENCY_STAGES:
        lines.append(f"  {stage:<9} {ms(stage, 'p50'):>7} {ms(stage, 'p95'):>7} {ms(stage, 'p99'):>7}")
    tp = s["throughput_rps"]
    lines.append(f"wall {s['wall_s']:.2f} s  throughput {'-' if tp is None else f'{tp:.1f}'} req/s")
    return "\n".join(lines)


def exit_code(report: dict[str, Any]) -> int:
    """0 when every request succeeded, else 1."""
    return 0 if report["summary"]["errors"] == 0 else 1

