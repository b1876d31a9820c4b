"""Benchmark points on a Dask distributed cluster (``splitfc bench --executor dask``).

The driver connects to an existing scheduler (``dask scheduler``; on Slurm through
``dask-jobqueue``, on Kubernetes through the dask-kubernetes operator or a Deployment of
workers, docs/bench.md). Before any point is sent, every worker reports its environment
(`environment_fingerprint`: the splitfc version and every identity the cache key hashes:
source, settings, library versions, ffmpeg/VTM binaries, checkpoints); a worker that differs
from the driver is refused with one line naming it and what differs. The driver connects and
checks before any point is computed, references included (`connect_dask`): an unreachable
scheduler fails after ``SPLITFC_DASK_CONNECT_TIMEOUT_S`` (default 5 s), and a worker that does
not see the driver's results folder (`check_shared_folder`: a token file with a random nonce
that every worker must read back at the same path) is refused with one line naming it and the
folder.

Each point runs `compute_point` on a worker, which writes its cache record atomically
(`ResultCache.put`: temporary file + ``os.replace``) under the run's cache folder, so
``RESULTS_DIR`` must be on storage every worker sees. A worker lost mid-point is handled by
Dask (the point is rescheduled on another worker; after the scheduler's
``allowed-failures`` it fails as ``KilledWorker``); a rerun computes only the points without a
record. Errors inside a point come back with the worker's host name.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from splitfc.common.bench.identity import ORIGINAL, KeyContext
from splitfc.common.errors import SplitfcError
from splitfc.common.settings import cluster_settings

__all__ = ["PointFailed", "check_shared_folder", "check_workers", "connect_dask", "environment_fingerprint",
           "execute_dask", "read_token"]

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


def read_token(path: str) -> str | None:
    """The text of the file at ``path`` (run on each worker by `check_shared_folder`), None if
    this process cannot read it."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def check_shared_folder(client: Any, cache_root: str | Path) -> None:
    """Check that every worker sees the driver's results cache folder ``cache_root``: the driver
    writes a token file holding a random nonce into it, each worker reads it at the same absolute
    path (`read_token`), and the token is removed. Raises `SplitfcError` (one line naming the
    worker's address and the folder) for the first worker that reads nothing or another nonce."""
    folder = Path(os.path.abspath(cache_root))
    folder.mkdir(parents=True, exist_ok=True)
    nonce = secrets.token_hex(16)
    token = folder / f".splitfc-shared-{nonce}"
    token.write_text(nonce)
    try:
        seen = client.run(read_token, str(token))
    finally:
        token.unlink(missing_ok=True)
    for address, value in sorted(seen.items()):
        if value != nonce:
            what = "cannot read" if value is None else "reads another nonce in"
            raise SplitfcError(f"worker {address} does not see the driver's results folder {folder} "
                               f"(it {what} the token file {token.name}); RESULTS_DIR must be on storage "
                               "every worker sees at the same path")


@contextmanager
def connect_dask(scheduler: str, preset: str, points: list[tuple[str, str, int]],
                 cache_root: str | Path) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``scheduler``, after checking the workers'
    environments for ``points`` (`check_workers`) and that they see ``cache_root``
    (`check_shared_folder`); closed on exit. Raises `SplitfcError` (one line) when the cluster
    extra is missing, the scheduler is not reached within ``SPLITFC_DASK_CONNECT_TIMEOUT_S``
    seconds (default 5), or a check fails."""
    try:
        from distributed import Client
    except ImportError:
        raise SplitfcError("--executor dask needs the cluster extra: pip install 'splitfc[cluster]'") from None
    timeout = cluster_settings().dask_connect_timeout_s
    try:
        client = Client(scheduler, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise SplitfcError(f"cannot reach the dask scheduler at {scheduler} within {timeout:g} s "
                           f"(SPLITFC_DASK_CONNECT_TIMEOUT_S): {exc}") from None
    try:
        check_workers(client, points, preset)
        check_shared_folder(client, cache_root)
        yield client
    finally:
        client.close()


def execute_dask(client: Any, todo: list[Any], done: Done) -> None:
    """Send ``todo`` (`PointJob`s) to the cluster of ``client`` (from `connect_dask`) and report
    each finished point to ``done(job, record, error)`` as it completes."""
    from distributed import as_completed

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
