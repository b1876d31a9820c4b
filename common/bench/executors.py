"""Benchmark points on a Dask distributed cluster (``splitfc bench --executor dask``).

The driver connects to an existing scheduler (``dask scheduler``; on Slurm through
``dask-jobqueue``, on Kubernetes through the dask-kubernetes operator or a Deployment of
workers, docs/bench.md). Before any point is sent, every worker reports its environment
(`environment_fingerprint`: the splitfc version and every identity the cache key hashes:
source, settings, library versions, ffmpeg/VTM binaries, checkpoints); a worker that differs
from the driver is refused with one line naming it and what differs.

Each point runs `compute_point` on a worker, which writes its cache record atomically
(`ResultCache.put`: temporary file + ``os.replace``) under the run's cache folder, so
``RESULTS_DIR`` must be on storage every worker sees. A worker lost mid-point is handled by
Dask (the point is rescheduled on another worker; after the scheduler's
``allowed-failures`` it fails as ``KilledWorker``); a rerun computes only the points without a
record. Errors inside a point come back with the worker's host name.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace
from importlib import metadata
from typing import Any

from splitfc.common.bench.identity import ORIGINAL, KeyContext
from splitfc.common.errors import SplitfcError

__all__ = ["PointFailed", "check_workers", "environment_fingerprint", "execute_dask"]

Done = Callable[[Any, dict[str, Any] | None, BaseException | None], None]


class PointFailed(SplitfcError):
    """A point failed on a worker; the message names the worker's host."""


def environment_fingerprint(points: Iterable[tuple[str, str, int]], preset: str) -> dict[str, Any]:
    """What this process's results depend on, by name: ``splitfc`` version, tail and coding
    identities, and per codec (external programs, source) and per (codec, split, rate) point
    (checkpoints). Equal fingerprints mean equal cache keys for the same points."""
    keys = KeyContext(preset)
    out: dict[str, Any] = {"splitfc version": metadata.version("splitfc"), "tail path": keys.tail}
    for split, codec, rate in sorted(set(points)):
        fields = keys.fields(split, codec, rate, "-", "-")
        if codec == ORIGINAL:
            continue
        out["coding path"] = fields["coding"]
        out[f"codec {codec}"] = fields["codec_identity"]
        out[f"checkpoint {codec} {split}@{rate}"] = fields["codec_point"]
    return out


def _differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    names = sorted(set(mine) | set(theirs))
    return [n for n in names if mine.get(n) != theirs.get(n)]


def check_workers(client: Any, points: list[tuple[str, str, int]], preset: str) -> list[str]:
    """The workers' addresses, after checking each one's `environment_fingerprint` against
    the driver's; raises `SplitfcError` (one line) for the first worker that differs."""
    mine = environment_fingerprint(points, preset)
    theirs = client.run(environment_fingerprint, points, preset)
    if not theirs:
        raise SplitfcError("dask cluster has no workers")
    for address, fingerprint in sorted(theirs.items()):
        diff = _differences(mine, fingerprint)
        if diff:
            raise SplitfcError(f"worker {address} has another environment than the driver: "
                               f"{', '.join(diff)} differ (use the same venv or image on every worker)")
    return sorted(theirs)


def run_point_on_worker(job: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    """`compute_point` on a worker: (host, record, None) or (host, None, error line)."""
    from splitfc.common.bench.runner import compute_point

    host = socket.gethostname()
    try:
        return host, compute_point(job), None
    except Exception as exc:  # any error of one point is that point's failure, reported with the worker's host
        return host, None, f"{type(exc).__name__}: {exc}"


def execute_dask(scheduler: str, preset: str, todo: list[Any], done: Done) -> None:
    """Send ``todo`` (`PointJob`s) to the Dask scheduler at ``scheduler`` and report each
    finished point to ``done(job, record, error)`` as it completes."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SplitfcError("--executor dask needs the cluster extra: pip install 'splitfc[cluster]'") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise SplitfcError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
    try:
        check_workers(client, [(j.split, j.codec, j.rate) for j in todo], preset)
        # Absolute paths: workers may start in other folders (the folder itself must be shared).
        jobs = [replace(j, feature_path=os.path.abspath(j.feature_path), cache_root=os.path.abspath(j.cache_root))
                for j in todo]
        futures = {client.submit(run_point_on_worker, job, key=f"splitfc-point-{job.key}"): job for job in jobs}
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    host, record, error = future.result()
                except Exception as exc:  # a lost worker (KilledWorker), a cancelled task
                    done(job, None, PointFailed(f"{type(exc).__name__}: {exc}"))
                    continue
                done(job, record, PointFailed(f"on {host}: {error}") if error else None)
        finally:
            client.cancel(list(futures))
    finally:
        client.close()

