"""`splitfc bench --executor dask` on a real local cluster: a scheduler and two worker processes
on 127.0.0.1 (loopback only), one worker killed mid-run, results equal to a local run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splitfc.common.bench.runner import BenchConfig, run_bench
from splitfc.common.errors import SplitfcError

pytest.importorskip("distributed")
pytest.importorskip("imageio_ffmpeg")

DASK = Path(sys.executable).with_name("dask")
# Fields that measure the run (times, memory, which process, when), not its result.
RUN_FIELDS = {"encode_ms", "decode_ms", "tail_ms", "peak_rss_mb", "peak_alloc_mb", "worker_pid", "finished_at"}


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "scheduler.json"
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / f"proc{len(self.procs)}.log", "wb")  # noqa: SIM115 - kept open by the process
        proc = subprocess.Popen([str(DASK), *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=self.root)
        self.procs.append(proc)
        return proc

    def scheduler(self) -> str:
        self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(self.file)])
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return json.loads(self.file.read_text())["address"]

    def worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._start(["worker", "--scheduler-file", str(self.file), "--host", "127.0.0.1", "--nthreads", "1",
                            "--no-nanny", "--no-dashboard", "--name", name],
                           {"OMP_NUM_THREADS": "1", **(env or {})})

    def wait_for_workers(self, address: str, n: int) -> None:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=60)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _config(out: Path, **kw: Any) -> BenchConfig:
    return BenchConfig(splits=["dinov2-cls"], codecs=["raw", "hevc"], output=out, samples=2, qps=[27, 37, 42],
                       plots=False, progress=False, **kw)


def _records(out: Path) -> dict[str, dict[str, Any]]:
    """Each cached record (by path under the cache) without its run-measurement fields, plus its arrays."""
    found: dict[str, dict[str, Any]] = {}
    for p in sorted((out / "cache").rglob("*.json")):
        record = {k: v for k, v in json.loads(p.read_text()).items() if k not in RUN_FIELDS}
        npz = p.with_suffix(".npz")
        record["npz"] = npz.read_bytes() if npz.exists() else None
        found[str(p.relative_to(out))] = record
    return found


@pytest.mark.timeout(300)
def test_dask_run_with_a_killed_worker_equals_a_local_run(tmp_path: Path, cluster: Cluster) -> None:
    local = run_bench(_config(tmp_path / "local"))
    assert local.failed == [] and local.computed == 2 + 2 * 4
    address = cluster.scheduler()
    victim = cluster.worker("victim")
    cluster.worker("survivor")
    cluster.wait_for_workers(address, 2)

    def kill_first_worker(record: dict[str, Any]) -> None:
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            victim.wait()

    out = tmp_path / "dask"
    summary = run_bench(_config(out, executor="dask", scheduler=address, on_point=kill_first_worker))
    assert victim.returncode == -signal.SIGKILL  # the worker was killed mid-run
    assert summary.failed == []
    assert summary.computed == 2 + 2 * 4
    pids = {json.loads(p.read_text())["worker_pid"] for p in (out / "cache" / "dinov2-cls" / "hevc").rglob("*.json")}
    assert os.getpid() not in pids  # codec points ran on the cluster
    assert _records(out) == _records(tmp_path / "local")
    # A rerun computes nothing: every record is in the shared cache.
    again = run_bench(_config(out, executor="dask", scheduler=address))
    assert (again.computed, again.cached) == (0, 10)


@pytest.mark.timeout(180)
def test_worker_with_another_environment_is_refused(tmp_path: Path, cluster: Cluster) -> None:
    address = cluster.scheduler()
    cluster.worker("same")
    other = "slow" if os.environ.get("SPLITFC_X265_PRESET") != "slow" else "fast"
    cluster.worker("odd", {"SPLITFC_X265_PRESET": other})  # changes the codec settings identity
    cluster.wait_for_workers(address, 2)
    with pytest.raises(SplitfcError, match=r"worker tcp://127\.0\.0\.1:\d+ has another environment .*coding path"):
        run_bench(_config(tmp_path / "out", executor="dask", scheduler=address))
    assert not list((tmp_path / "out" / "cache" / "dinov2-cls").glob("hevc/**/*.json"))


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.timeout(120)
def test_unreachable_scheduler_fails_before_any_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from splitfc.cli import main

    monkeypatch.setenv("SPLITFC_DASK_CONNECT_TIMEOUT_S", "2")
    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "out"
    with pytest.raises(SplitfcError, match=rf"cannot reach the dask scheduler at tcp://127\.0\.0\.1:{port} within 2 s"):
        run_bench(_config(out, executor="dask", scheduler=address))
    assert _files(out / "cache") == []  # no reference (or other) point was computed first
    code = main(["bench", "--executor", "dask", "--scheduler", address, "--splits", "dinov2-cls", "--codecs", "raw",
                 "--samples", "1", "--no-plots", "-o", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"splitfc: error: cannot reach the dask scheduler at {address}")
    assert _files(out / "cache") == []


@pytest.mark.timeout(180)
def test_worker_that_does_not_see_the_results_folder_is_refused(tmp_path: Path, cluster: Cluster,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from splitfc.common.bench import executors

    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"  # the results folder on the "odd" worker's own file system
    (elsewhere / "cache").mkdir(parents=True)
    shared, own = str(out), str(elsewhere)

    def read_on_own_disk(path: str, dask_worker: Any = None) -> str | None:  # client.run passes the worker
        if dask_worker.name == "odd":
            path = own + path[len(shared):]
        try:
            return Path(path).read_text()
        except OSError:
            return None

    monkeypatch.setattr(executors, "read_token", read_on_own_disk)
    address = cluster.scheduler()
    cluster.worker("same")
    cluster.worker("odd")
    cluster.wait_for_workers(address, 2)
    with pytest.raises(SplitfcError) as info:
        run_bench(_config(out, executor="dask", scheduler=address))
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(rf"worker tcp://127\.0\.0\.1:\d+ does not see the driver's results folder "
                        rf"{re.escape(str(out / 'cache'))} "
                        r"\(it cannot read the token file \.splitfc-shared-[0-9a-f]+\); "
                        r"RESULTS_DIR must be on storage every worker sees at the same path", message), message
    from distributed import Client

    with Client(address, timeout="30s") as client:
        odd = [a for a, info_ in client.scheduler_info()["workers"].items() if info_["name"] == "odd"]
    assert odd and message.startswith(f"worker {odd[0]} ")  # the odd worker, by address
    assert _files(out / "cache") == [] and _files(elsewhere) == []  # nothing written, token removed


def test_dask_executor_needs_a_scheduler(tmp_path: Path) -> None:
    with pytest.raises(SplitfcError, match="--scheduler"):
        run_bench(_config(tmp_path / "out", executor="dask"))


@pytest.mark.parametrize("error", [KeyError("split"), MemoryError("no room"), SplitfcError("bad point")])
def test_a_failing_point_is_reported_with_the_workers_host(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    import socket

    from splitfc.common.bench import executors, runner

    def failing_point(job: Any) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(runner, "compute_point", failing_point)
    host, record, message = executors.run_point_on_worker(object())
    assert (host, record) == (socket.gethostname(), None)
    assert message == f"{type(error).__name__}: {error}"
