"""The benchmark runner: every (split, codec, rate point, sample), cached and resumable.

Per split, features come from `features` (extracted or read). The "Original"
point runs the tail on the uncompressed features; its outputs are the reference
of the task metric (paper Table 3's first row). Every codec point encodes,
decodes, measures, runs the tail and stores one cache record (`cache`) under a
key of everything the result depends on (`identity`); the analyses and reports
are then built from the cache alone.

A codec point codes its sample twice: once under the memory sampler
(`measure_peak`, a thread waking every 5 ms plus tracemalloc), for the peak
memory figures only, then once with nothing else running, for the encode and
decode times (the sampler doubled them).

Parallel workers (``jobs > 1``) are spawned processes, each with
``max(1, cores // jobs)`` torch threads, so that workers x threads stays within
the machine's cores; the external codecs (VTM, VVenC, x265) run single-threaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from splitfc.common.bench import task
from splitfc.common.bench.acceptance import summary_lines
from splitfc.common.bench.aggregate import group_failures
from splitfc.common.bench.cache import ResultCache
from splitfc.common.bench.features import FeatureFile, extract_features, read_feature_dir
from splitfc.common.bench.identity import ORIGINAL, KeyContext, point_key_for
from splitfc.common.bench.memory import measure_peak
from splitfc.common.errors import SplitfcError, UnknownNameError
from splitfc.common.specs import SPLITS, get_split

__all__ = ["ORIGINAL", "BenchConfig", "BenchStopped", "BenchSummary", "PointJob", "compute_point", "point_key_for",
           "run_bench"]


class BenchStopped(Exception):
    """Raised by the ``stop_after`` hook: the run stops as if killed (for resume tests)."""


@dataclass
class BenchConfig:
    """What ``splitfc bench`` runs."""

    splits: list[str]
    codecs: list[str]
    output: Path
    preset: str = "tiny"
    features_dir: Path | None = None
    samples: int = 4
    jobs: int = 1
    executor: str = "local"
    """``local`` (this machine, ``jobs`` processes) or ``dask`` (the cluster at ``scheduler``, `executors`)."""
    scheduler: str | None = None
    qps: list[int] | None = None
    """Override the QP codecs' rate points (default: the paper's 22..42)."""
    qualities: list[int] | None = None
    """Override the quality codecs' rate points (default: 1..5)."""
    anchor: str | None = None
    best_of: list[str] | None = None
    """Anchors of the best-of BD-rate (`acceptance`; default vtm, vvenc, hevc)."""
    plots: bool = True
    progress: bool = True
    stop_after: int | None = None
    """Testing hook: raise `BenchStopped` after computing this many new points."""
    on_point: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class PointJob:
    """One point to compute (picklable, sent to workers)."""

    split: str
    codec: str
    rate: int
    sample: str
    feature_path: str
    feature_sha256: str
    preset: str
    key: str
    cache_root: str


@dataclass
class BenchSummary:
    """What happened in a run."""

    total_points: int = 0
    computed: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)
    """One line per failed point: ``split codec@rate sample: error``."""
    skipped_codecs: dict[str, str] = field(default_factory=dict)
    skipped_splits: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """BD-rates left undefined (curves that do not overlap, too few points)."""
    best_of: list[str] = field(default_factory=list)
    """One line per (split, codec): BD-rates vs the best of the anchors (`acceptance.summary_lines`)."""
    wall_s: float = 0.0
    files: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"bench: {self.total_points} points: {self.computed} computed, {self.cached} from cache, "
            f"{len(self.failed)} failed; {self.wall_s:.1f} s",
        ]
        for name, why in self.skipped_codecs.items():
            lines.append(f"  skipped codec {name}: {why}")
        for name, why in self.skipped_splits.items():
            lines.append(f"  skipped split {name}: {why}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        lines.extend(self.best_of)
        for (split, codec, error), count in self.failure_groups().items():
            lines.append(f"  failed: {codec} on {split}, {count} point(s): {error}")
        lines.extend(f"  wrote {f}" for f in self.files)
        return "\n".join(lines)

    def failure_groups(self) -> dict[tuple[str, str, str], int]:
        """Failed points counted by (split, codec, error message)."""
        return group_failures(self.failed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- one point


def load_feature_file(path: str | Path, split: str) -> np.ndarray:
    """A feature ``.npy`` in the split's layout; leading batch axes of size 1 are dropped."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SplitfcError(f"{path} is not a readable .npy array: {exc}") from None
    rank = get_split(split).rank
    while features.ndim > rank and features.shape[0] == 1:
        features = features[0]
    if features.dtype.kind != "f":
        raise SplitfcError(f"{path}: features must be floating point, got {features.dtype}")
    return np.ascontiguousarray(features)


def _worker_init(torch_threads: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)


def compute_point(job: PointJob) -> dict[str, Any]:
    """Encode, decode, measure and run the tail on one sample; store and return its record."""
    from splitfc.common.bitstream import bitstream_stats, decode_features, encode_features

    features = load_feature_file(job.feature_path, job.split)
    record: dict[str, Any] = {
        "split": job.split, "codec": job.codec, "rate": job.rate, "sample": job.sample, "key": job.key,
        "preset": job.preset, "feature_sha256": job.feature_sha256, "shape": list(features.shape),
        "dtype": features.dtype.name, "feature_points": int(features.size),
    }
    if job.codec == ORIGINAL:
        decoded = features
        bits = features.dtype.itemsize * 8
        record.update(payload_bits=bits * int(features.size), header_bytes=0, bpfp=float(bits),
                      bpfp_with_header=float(bits), encode_ms=0.0, decode_ms=0.0, peak_rss_mb=None,
                      peak_alloc_mb=None)
    else:
        # Memory pass: its own encode + decode under the sampler, first, so that first-use
        # loading (a checkpoint, the ffmpeg binary's pages) is not in the timed pass either.
        spec = get_split(job.split, job.preset)  # the preset's truncation ranges (small: its own)
        with measure_peak() as mem:
            decode_features(encode_features(features, spec, job.codec, job.rate))
        # Timed pass: nothing else running in this process.
        t0 = time.perf_counter()
        msg = encode_features(features, spec, job.codec, job.rate)
        t1 = time.perf_counter()
        decoded = decode_features(msg)
        t2 = time.perf_counter()
        stats = bitstream_stats(msg)
        record.update(
            payload_bits=stats.payload_bits, header_bytes=stats.header_bytes, bpfp=stats.bpfp,
            bpfp_with_header=stats.bpfp_with_header, encode_ms=(t1 - t0) * 1e3, decode_ms=(t2 - t1) * 1e3,
            peak_rss_mb=round(mem.peak_rss_mb, 2), peak_alloc_mb=round(mem.peak_alloc_mb, 2),
        )
    diff = features.astype(np.float64) - decoded.astype(np.float64)
    record["feature_mse"] = float(np.mean(diff * diff))
    model = task.split_model(job.split, job.preset)
    t3 = time.perf_counter()
    output = model.tail(np.ascontiguousarray(decoded))
    record["tail_ms"] = (time.perf_counter() - t3) * 1e3
    fields, arrays = task.output_to_cache(output)
    record["output"] = fields
    record["worker_pid"] = os.getpid()
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    ResultCache(Path(job.cache_root)).put(record, arrays)
    return record


# ----------------------------------------------------------------------------- the run


def resolve_splits(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return list(SPLITS)
    for n in names:
        get_split(n)
    return names


def resolve_codecs(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Known codecs split into runnable ones and skipped ones (name -> why)."""
    from splitfc.common.codecs import CODECS

    runnable: list[str] = []
    skipped: dict[str, str] = {}
    for n in names:
        if n not in CODECS:
            raise UnknownNameError(f"unknown codec {n!r}; valid codecs: {', '.join(CODECS)}")
        reason = CODECS[n].unavailable_reason()
        if reason is None:
            runnable.append(n)
        else:
            skipped[n] = reason
    return runnable, skipped


def codec_rates(name: str, config: BenchConfig) -> list[int]:
    from splitfc.common.codecs import CODECS

    cls = CODECS[name]
    if cls.rate_name == "qp" and config.qps:
        return list(config.qps)
    if cls.rate_name == "quality" and config.qualities:
        return list(config.qualities)
    return list(cls.rates)


def _features_for(config: BenchConfig, split: str) -> list[FeatureFile]:
    if config.features_dir is not None:
        return read_feature_dir(config.features_dir, split, config.samples)
    return extract_features(config.output / "features", split, config.preset, config.samples)


def plan_jobs(config: BenchConfig, cache_: ResultCache, summary: BenchSummary,
              codecs: list[str]) -> tuple[list[PointJob], list[PointJob]]:
    """(reference jobs, codec jobs) over all splits, cached points included."""
    refs: list[PointJob] = []
    jobs: list[PointJob] = []
    keys = KeyContext(config.preset)
    for split in resolve_splits(config.splits):
        try:
            files = _features_for(config, split)
        except SplitfcError as exc:
            summary.skipped_splits[split] = str(exc)
            continue
        for f in files:
            key = keys.key(split, ORIGINAL, 0, f.sample, f.sha256)
            refs.append(PointJob(split, ORIGINAL, 0, f.sample, str(f.path), f.sha256, config.preset, key,
                                 str(cache_.root)))
        for codec in codecs:
            for rate in codec_rates(codec, config):
                for f in files:
                    key = keys.key(split, codec, rate, f.sample, f.sha256)
                    jobs.append(PointJob(split, codec, rate, f.sample, str(f.path), f.sha256, config.preset, key,
                                         str(cache_.root)))
    return refs, jobs


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="bench", unit="pt", disable=not enabled, smoothing=0.1,
                dynamic_ncols=True)


def execute(config: BenchConfig, jobs: list[PointJob], cache_: ResultCache, summary: BenchSummary,
            client: Any = None) -> None:
    """Compute the jobs not in the cache (in-process, in a process pool, or on the Dask cluster of
    ``client``, from `executors.connect_dask`)."""
    todo = []
    for job in jobs:
        if cache_.get(job.split, job.codec, job.rate, job.sample, job.key) is not None:
            summary.cached += 1
        else:
            todo.append(job)
    summary.total_points += len(jobs)
    if not todo:
        return
    bar = _progress(len(jobs), len(jobs) - len(todo), config.progress)
    computed_here = [0]

    def done(job: PointJob, record: dict[str, Any] | None, error: BaseException | None) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{job.split} {job.codec}@{job.rate}", refresh=False)
        if error is not None:
            summary.failed.append(f"{job.split} {job.codec}@{job.rate} {job.sample}: {error}")
            return
        summary.computed += 1
        computed_here[0] += 1
        if config.on_point is not None and record is not None:
            config.on_point(record)
        if config.stop_after is not None and computed_here[0] >= config.stop_after:
            raise BenchStopped(f"stopped after {computed_here[0]} computed points")

    try:
        if config.executor == "dask":
            from splitfc.common.bench.executors import execute_dask

            execute_dask(client, todo, done)
        elif config.jobs <= 1:
            for job in todo:
                try:
                    record = compute_point(job)
                except (SplitfcError, ValueError, RuntimeError, OSError) as exc:
                    done(job, None, exc)
                else:
                    done(job, record, None)
        else:
            _execute_pool(config, todo, done)
    finally:
        bar.close()


def _execute_pool(config: BenchConfig, todo: list[PointJob],
                  done: Callable[[PointJob, dict[str, Any] | None, BaseException | None], None]) -> None:
    cores = os.cpu_count() or 1
    threads = max(1, cores // config.jobs)
    pool = ProcessPoolExecutor(max_workers=config.jobs, mp_context=get_context("spawn"),
                               initializer=_worker_init, initargs=(threads,))
    pending: dict[Future[dict[str, Any]], PointJob] = {}
    queue = list(reversed(todo))
    try:
        # Keep a bounded number of jobs in flight so an interrupt wastes little work.
        while queue or pending:
            while queue and len(pending) < 2 * config.jobs:
                job = queue.pop()
                pending[pool.submit(compute_point, job)] = job
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                exc = fut.exception()
                done(job, None if exc else fut.result(), exc)
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)


def run_bench(config: BenchConfig) -> BenchSummary:
    """Run (or resume) a benchmark and write its reports; returns the summary."""
    from splitfc.common.bench import report

    start = time.perf_counter()
    if config.executor not in ("local", "dask"):
        raise SplitfcError(f"unknown executor {config.executor!r}; valid executors: local, dask")
    if config.executor == "dask" and not config.scheduler:
        raise SplitfcError("--executor dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    from splitfc.common.models import check_preset

    check_preset(config.preset)  # UnknownNameError naming tiny, small, paper
    config.output.mkdir(parents=True, exist_ok=True)
    cache_ = ResultCache(config.output / "cache")
    summary = BenchSummary()
    codecs, summary.skipped_codecs = resolve_codecs(config.codecs)
    if config.anchor is not None and config.anchor not in codecs:
        raise SplitfcError(f"anchor codec {config.anchor!r} is not among the codecs run: {', '.join(codecs)}")
    if config.best_of is not None:
        from splitfc.common.codecs import CODECS

        unknown = [c for c in config.best_of if c not in CODECS]
        if unknown or not config.best_of:
            raise UnknownNameError(f"--best-of needs registered codec names, got {', '.join(config.best_of) or 'none'}"
                                   f"; valid codecs: {', '.join(CODECS)}")
    refs, jobs = plan_jobs(config, cache_, summary, codecs)
    if not refs:
        raise SplitfcError("no split has features to benchmark: " + "; ".join(
            f"{k}: {v}" for k, v in summary.skipped_splits.items()))
    with ExitStack() as stack:
        client = None
        missing = [j for j in jobs if config.executor == "dask"
                   and cache_.get(j.split, j.codec, j.rate, j.sample, j.key) is None]
        if missing:
            # Connect and check the cluster before any point (references included) is computed.
            from splitfc.common.bench.executors import connect_dask

            client = stack.enter_context(connect_dask(config.scheduler or "", config.preset,
                                                      [(j.split, j.codec, j.rate) for j in missing], cache_.root))
        # References first and in-process: the codec points are scored against them.
        ref_config = replace(config, jobs=1, executor="local", stop_after=None, on_point=None)
        execute(ref_config, refs, cache_, summary)
        execute(config, jobs, cache_, summary, client)
    results = report.build_results(config, cache_, refs + jobs, codecs, summary)
    summary.warnings = [
        f"BD-rate {e['split']} {e['test']} vs {e['anchor']} undefined: " + "; ".join(e["notes"])
        for e in results["bd_rate"] if e["bd_rate"] is None and e["anchor"] == results["config"]["anchor"]
    ]
    summary.best_of = summary_lines(results["bd_rate_best_of"])
    summary.wall_s = time.perf_counter() - start
    results["summary"] = summary.as_dict()
    summary.files = report.write_all(config, results)
    return summary
