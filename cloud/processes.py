"""Several engine processes behind one gRPC port: the ``SO_REUSEPORT`` pattern of gRPC's Python
multiprocessing example (grpc/examples/python/multiprocessing).

``splitfc cloud serve --processes N`` (``SPLITFC_CLOUD_PROCESSES``) runs a supervisor and N engine
processes. The supervisor

* refuses ``processes x max_concurrency x torch_threads`` over the usable cores (one line);
* reserves the gRPC port with a socket bound with ``SO_REUSEPORT`` that never listens (so port 0
  picks one port for all, and no connection is ever routed to the supervisor);
* sets ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported anywhere (its own value
  classes are chosen at import), then spawns the engine processes (multiprocessing ``spawn``: a fresh
  interpreter, so no gRPC, torch or event-loop state crosses; the gRPC docs forbid forking a process
  that has created gRPC objects);
* serves the HTTP side for all of them (`splitfc.cloud.http.create_processes_app`): /healthz, /readyz
  (200 while every engine process serves), /v1/info (a serving process's GetInfo), /metrics
  (prometheus_client's `MultiProcessCollector` over the directory: counters and histograms summed over
  every process that ever ran, gauges over the live ones by their ``multiprocess_mode``);
* restarts an engine process that dies after it served (its gauges dropped with `mark_process_dead`,
  its counters kept), and exits with one line when one dies before it served (a start-up error that a
  restart would only repeat) or when processes died more than `MAX_RESTARTS` times in
  `RESTART_WINDOW_S` (a crash loop).

An engine process loads its models *before* it binds the port, so the kernel never hands a
connection to a process that cannot answer yet. The kernel balances *connections*, not requests:
one gRPC channel (one HTTP/2 connection) talks to one engine process for its whole life, so the
gain needs several client connections (many edges, or one client with several channels).
Every limit (max_concurrency, max_queue, per-client streams, the upload budget) holds per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import multiprocessing
import multiprocessing.process
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitfc.cloud.settings import CloudSettings
from splitfc.common.errors import SplitfcError

MAX_RESTARTS = 5
"""Engine-process deaths tolerated within `RESTART_WINDOW_S`; one more and the supervisor exits."""
RESTART_WINDOW_S = 60.0
POLL_S = 0.1
"""How often the supervisor looks at its engine processes."""
STOP_MARGIN_S = 10.0
"""On SIGTERM: how long past ``drain_seconds`` an engine process may take to exit before SIGKILL."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
"""cgroup v2 CPU quota: ``<quota us> <period us>`` or ``max <period>`` (a container's CPU limit)."""


def usable_cores(cpu_max: str = CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU
    quota rounded down (a Kubernetes ``limits.cpu`` of 2.5 counts as 2), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def check_cores(settings: CloudSettings, cores: int | None = None) -> None:
    """Raise `SplitfcError` (one line) when ``processes x max_concurrency x torch_threads`` CPU-bound
    threads would exceed ``cores`` (default: `usable_cores`)."""
    cores = usable_cores() if cores is None else cores
    s = settings
    threads = s.processes * s.max_concurrency * s.torch_threads
    if threads > cores:
        raise SplitfcError(
            f"--processes {s.processes} x max_concurrency {s.max_concurrency} x torch_threads {s.torch_threads} = "
            f"{threads} CPU-bound threads on {cores} usable cores; lower --processes or --max-concurrency "
            f"(SPLITFC_CLOUD_PROCESSES, SPLITFC_CLOUD_MAX_CONCURRENCY, SPLITFC_CLOUD_TORCH_THREADS)"
        )


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for this process and the engine processes it spawns; returns
    (the directory, whether it was created here and is to be removed at exit).

    An operator's directory (the variable already set) must exist; its ``*.db`` files of an earlier
    run are removed, as prometheus_client's documentation asks. Call before prometheus_client is
    imported (it is switched to multiprocess values if it already was)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        if not os.path.isdir(given):
            raise SplitfcError(f"{MULTIPROC_ENV}={given} is not a directory")
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        path, created = given, False
    else:
        path, created = tempfile.mkdtemp(prefix="splitfc-metrics-"), True
        os.environ[MULTIPROC_ENV] = path
    if "prometheus_client" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return path, created


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT that never listens: it holds the port (port 0
    picks one) while the engine processes bind it too. Raises `SplitfcError` when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SplitfcError(f"cannot bind gRPC port {host}:{port}: {exc.strerror}") from None
    return sock


# -- one engine process (runs in the spawned interpreter) ---------------------------------------
def engine_process_main(settings: CloudSettings, index: int, status: Any) -> None:
    """Entry point of engine process ``index``: load the models, then serve gRPC on the shared port
    until SIGTERM/SIGINT (drain as `CloudServer.serve`). Reports ``("serving", index, pid, GetInfo
    bytes)`` or ``("failed", index, pid, message)`` on ``status`` (a multiprocessing queue)."""
    pid = os.getpid()
    try:
        asyncio.run(_serve_engine(settings, index, status))
    except BaseException as exc:  # reported to the supervisor, then exit 1
        message = str(exc) if isinstance(exc, SplitfcError) else f"{type(exc).__name__}: {exc}"
        status.put(("failed", index, pid, message))
        status.close()
        status.join_thread()
        sys.exit(1)


async def _serve_engine(settings: CloudSettings, index: int, status: Any) -> None:
    from splitfc.cloud.server import CloudServer

    server = CloudServer(settings, reuse_port=True, serve_http=False)
    await asyncio.to_thread(server.engine.load_models)  # before binding: no connection reaches a loading process

    def serving(_endpoints: object) -> None:
        status.put(("serving", index, os.getpid(), server.engine.info().SerializeToString()))

    await server.serve(on_start=serving)


# -- the supervisor ------------------------------------------------------------------------------
@dataclass
class EngineProcess:
    """One engine process the supervisor started (``index`` is its slot, kept across restarts)."""

    index: int
    process: multiprocessing.process.BaseProcess
    restarts: int = 0
    serving: bool = False
    info: bytes | None = None
    error: str | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)


def _how_it_ended(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class Supervisor:
    """Starts, watches and stops the engine processes and serves their HTTP side (`EngineProcesses`)."""

    settings: CloudSettings
    metrics_dir: str
    engines: list[EngineProcess] = field(default_factory=list)
    stopping: bool = False
    _deaths: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._status: Any = self._ctx.Queue()
        self._engine_settings = self.settings

    # -- what the HTTP side reads (called from uvicorn's thread pool) ------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        engines = list(self.engines)
        serving = [e for e in engines if e.serving and e.process.exitcode is None]
        ready = not self.stopping and len(serving) == self.settings.processes
        split_ids = self.settings.split_ids()
        body = {
            "ready": ready, "loaded": split_ids if ready else [], "splits": split_ids,
            "processes": self.settings.processes,
            "engines": [
                {"index": e.index, "pid": e.pid, "serving": e.serving and e.process.exitcode is None,
                 "restarts": e.restarts}
                for e in engines
            ],
        }
        return ready, body

    def info(self) -> Any:
        from splitfc.v1 import service_pb2 as svc

        for e in list(self.engines):
            if e.serving and e.info is not None:
                return svc.ServerInfo.FromString(e.info)
        return None

    def exposition(self) -> bytes:
        from splitfc.cloud.metrics import multiprocess_exposition

        return multiprocess_exposition(self.metrics_dir)

    # -- engine processes ------------------------------------------------------------------------
    def _spawn(self, index: int, restarts: int = 0) -> EngineProcess:
        process = self._ctx.Process(
            target=engine_process_main, args=(self._engine_settings, index, self._status),
            name=f"splitfc-engine-{index}", daemon=False,
        )
        process.start()
        return EngineProcess(index, process, restarts)

    def _read_status(self) -> None:
        by_pid = {e.pid: e for e in self.engines}
        while True:
            try:
                kind, _index, pid, detail = self._status.get_nowait()
            except queue.Empty:
                return
            engine = by_pid.get(pid)
            if engine is None:
                continue
            if kind == "serving":
                engine.serving, engine.info = True, detail
            else:
                engine.error = detail

    def _check_engines(self) -> None:
        """Restart engine processes that died after serving; raise `SplitfcError` for one that died
        before it served, or for a crash loop."""
        from prometheus_client import multiprocess

        for slot, engine in enumerate(self.engines):
            code = engine.process.exitcode
            if code is None:
                continue
            engine.process.join()
            self._read_status()  # what it said just before it ended
            multiprocess.mark_process_dead(engine.pid, self.metrics_dir)
            how = _how_it_ended(code)
            if not engine.serving:
                reason = engine.error or "it reported no error (see its output above)"
                raise SplitfcError(
                    f"engine process {engine.index} (pid {engine.pid}) ended with {how} before it served: {reason}"
                )
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
                self._deaths.popleft()
            if len(self._deaths) > MAX_RESTARTS:
                raise SplitfcError(
                    f"engine processes died {len(self._deaths)} times within {RESTART_WINDOW_S:g} s (last: process "
                    f"{engine.index}, pid {engine.pid}, {how}); stopping rather than restarting in a loop"
                )
            replacement = self._spawn(engine.index, engine.restarts + 1)
            print(
                f"splitfc cloud: engine process {engine.index} (pid {engine.pid}) ended with {how}; restarted it "
                f"as pid {replacement.pid} (restart {replacement.restarts})", file=sys.stderr, flush=True,
            )
            self.engines[slot] = replacement

    async def _stop_engines(self) -> None:
        from prometheus_client import multiprocess

        live = [e for e in self.engines if e.process.exitcode is None]
        for e in live:
            e.process.terminate()  # SIGTERM: the engine drains (drain_seconds)
        end = time.monotonic() + self.settings.drain_seconds + STOP_MARGIN_S
        for e in live:
            await asyncio.to_thread(e.process.join, max(0.0, end - time.monotonic()))
            if e.process.exitcode is None:
                print(f"splitfc cloud: engine process {e.index} (pid {e.pid}) did not stop; killing it",
                      file=sys.stderr, flush=True)
                e.process.kill()
                await asyncio.to_thread(e.process.join, 5.0)
        for e in self.engines:
            multiprocess.mark_process_dead(e.pid, self.metrics_dir)

    async def serve(self, on_start: Callable[[Any], None] | None = None) -> None:
        """Run until SIGTERM/SIGINT (then stop every engine process, each draining) or a fatal engine
        failure (raised as `SplitfcError` after the others stopped)."""
        from splitfc.cloud.http import create_processes_app
        from splitfc.cloud.metrics import auth_failures_counter
        from splitfc.cloud.security import check_transport
        from splitfc.cloud.server import Endpoints, start_http

        s = self.settings
        policy = check_transport(s)
        for warning in policy.warnings:
            print(f"splitfc cloud: warning: {warning}", file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port_holder = reserve_port(s.host, s.grpc_port)
        from prometheus_client import CollectorRegistry

        auth_failures = auth_failures_counter(CollectorRegistry())  # in metrics_dir, like the engines' metrics
        app = create_processes_app(self, auth_failures, policy.tokens)
        http, http_task, http_port = await start_http(s, policy, app)
        grpc_port = port_holder.getsockname()[1]
        self._engine_settings = s.model_copy(update={"grpc_port": grpc_port, "http_port": 0})
        failure: SplitfcError | None = None
        try:
            self.engines = [self._spawn(i) for i in range(s.processes)]
            if on_start is not None:
                on_start(Endpoints(s.host, grpc_port, http_port, policy.tls))
            while not stop.is_set():
                self._read_status()
                if stop.is_set():  # SIGINT reaches the engines too: one loading then exits, and is no failure
                    break
                self._check_engines()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
        except SplitfcError as exc:
            failure = exc
        finally:
            self.stopping = True
            await self._stop_engines()
            http.should_exit = True
            await http_task
            port_holder.close()
            self._status.close()
        if failure is not None:
            raise failure


def serve_processes(settings: CloudSettings, on_start: Callable[[Any], None] | None = None) -> None:
    """``splitfc cloud serve --processes N``: check the cores, set up the metrics directory, run the
    `Supervisor` until SIGTERM/SIGINT; the directory it created is removed at the end."""
    check_cores(settings)
    path, created = prepare_multiprocess_dir()
    try:
        asyncio.run(Supervisor(settings, path).serve(on_start))
    finally:
        if created:
            shutil.rmtree(path, ignore_errors=True)
