"""The cloud server: gRPC (service + health + reflection) and HTTP on one event loop.

Start-up binds both ports first (health NOT_SERVING, /readyz 503), loads the
models in a thread, then turns health SERVING. ``stop`` (SIGTERM/SIGINT in
``serve``) turns health NOT_SERVING, refuses new calls and lets in-flight
requests finish for up to ``drain_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Generator
from dataclasses import dataclass

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitfc.cloud.engine import InferenceEngine, ModelLoader, default_model_loader
from splitfc.cloud.http import create_app
from splitfc.cloud.metrics import CloudMetrics
from splitfc.cloud.security import ServerGuard, TransportPolicy, check_transport
from splitfc.cloud.servicer import SERVICE_NAME, SplitInferenceServicer, add_servicer
from splitfc.cloud.settings import CloudSettings
from splitfc.common.errors import SplitfcError
from splitfc.common.jsonlog import private_logger

REQUEST_LOGGER = "splitfc.cloud.requests"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (the cloud server owns SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True)
class Endpoints:
    host: str
    grpc_port: int
    http_port: int

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    tls: bool = False

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"


async def start_http(
    settings: CloudSettings, policy: TransportPolicy, app: object,
) -> tuple[_Uvicorn, asyncio.Task[None], int]:
    """Bind ``settings.http_port`` and serve ``app`` with uvicorn on this loop (TLS as ``policy`` says);
    returns the server, its task and the bound port. Raises `SplitfcError` when the port cannot be bound."""
    s = settings
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((s.host, s.http_port))
    except OSError as exc:
        sock.close()
        raise SplitfcError(f"cannot bind HTTP port {s.host}:{s.http_port}: {exc.strerror}") from None
    http_port = sock.getsockname()[1]
    tls: dict[str, object] = {}
    if policy.tls:
        tls = {"ssl_certfile": str(s.tls_cert), "ssl_keyfile": str(s.tls_key)}
        if policy.mutual_tls:
            tls.update(ssl_ca_certs=str(s.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", **tls,  # type: ignore[arg-type]
    )
    http = _Uvicorn(config)
    task = asyncio.create_task(http.serve(sockets=[sock]))
    while not http.started:
        if task.done():
            task.result()
            raise SplitfcError("HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return http, task, http_port


def _grpc_bind_error(host: str, port: int, grpc_message: str) -> str:
    """One line saying why gRPC could not bind ``host:port``: gRPC's own message names no cause, so the
    port is probed with a plain socket (SO_REUSEADDR, as gRPC binds) and EADDRINUSE reads "port N is in use"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"cannot bind gRPC port {host}:{port}: port {port} is in use (another server listens there)"
            return f"cannot bind gRPC port {host}:{port}: {exc.strerror}"
    return f"cannot bind gRPC port {host}:{port}: {grpc_message.split(';')[0]}"


class CloudServer:
    """One cloud instance (its own metrics registry; several may run in one process)."""

    def __init__(
        self, settings: CloudSettings | None = None, model_loader: ModelLoader = default_model_loader,
        logger: logging.Logger | None = None, *, reuse_port: bool = False, serve_http: bool = True,
    ) -> None:
        self.settings = settings or CloudSettings()
        self.reuse_port = reuse_port
        """Bind the gRPC port with SO_REUSEPORT (one of several engine processes, `splitfc.cloud.processes`)."""
        self.serve_http = serve_http
        """Serve the HTTP side here (False in an engine process: its supervisor serves HTTP for all)."""
        self.metrics = CloudMetrics()
        if logger is None:
            logger = private_logger(REQUEST_LOGGER, self.settings.log_file, enabled=self.settings.log_requests)
        self.policy: TransportPolicy = check_transport(self.settings)
        """TLS and token policy (raises `SecurityConfigError` here, before anything is bound)."""
        self.engine = InferenceEngine(self.settings, self.metrics, logger, model_loader)
        self.health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.endpoints: Endpoints | None = None
        self._stopping = False

    async def start(self) -> Endpoints:
        """Bind both ports and start loading the models; returns the bound endpoints."""
        s = self.settings
        loop = asyncio.get_running_loop()
        self.engine.bind_loop(loop)
        if self.serve_http:  # an engine process's supervisor has printed them once for all
            for warning in self.policy.warnings:
                print(f"splitfc cloud: warning: {warning}", file=sys.stderr, flush=True)
        guard = ServerGuard(self.policy.tokens, self.metrics, s.max_streams_per_client)
        # gRPC Python turns SO_REUSEPORT on by default (Linux): a second server on a used port would bind
        # silently and the kernel would split connections between the two. Only engine processes share one.
        options = [*s.grpc_options(), ("grpc.so_reuseport", 1 if self.reuse_port else 0)]
        server = grpc.aio.server(options=options, interceptors=[guard])
        add_servicer(SplitInferenceServicer(self.engine), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        try:
            creds = self.policy.grpc_credentials()
            address = f"{s.host}:{s.grpc_port}"
            grpc_port = server.add_insecure_port(address) if creds is None else server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise SplitfcError(_grpc_bind_error(s.host, s.grpc_port, str(exc))) from None
        if grpc_port == 0:
            raise SplitfcError(_grpc_bind_error(s.host, s.grpc_port, "no address bound"))
        await server.start()
        self._grpc = server
        if not self.serve_http:
            self.endpoints = Endpoints(s.host, grpc_port, 0, self.policy.tls)
            self._load_task = asyncio.create_task(self._load_models())
            return self.endpoints

        try:
            self._http, self._http_task, http_port = await start_http(
                s, self.policy, create_app(self.engine, self.metrics, self.policy.tokens)
            )
        except BaseException:
            await server.stop(0)
            raise
        self.endpoints = Endpoints(s.host, grpc_port, http_port, self.policy.tls)
        self._load_task = asyncio.create_task(self._load_models())
        return self.endpoints

    async def _load_models(self) -> None:
        try:
            if not self.engine.ready:  # an engine process loads its models before it binds (processes.py)
                await asyncio.to_thread(self.engine.load_models)
        except Exception as exc:
            # Reported by /readyz, wait_ready() and `cloud serve` (which then exits with this error).
            self.engine.load_error = f"{type(exc).__name__}: {exc}"
            return
        if not self._stopping:
            for name in ("", SERVICE_NAME):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the models are loaded; raise if loading failed."""
        assert self._load_task is not None, "start() first"
        await asyncio.wait_for(asyncio.shield(self._load_task), timeout)
        if self.engine.load_error:
            raise SplitfcError(f"cloud could not load its models: {self.engine.load_error}")

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``grace`` s), stop HTTP."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.drain_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.engine.metrics.ready.set(0)
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self._load_task is not None and not self._load_task.done():
            # The loader thread cannot be interrupted; let it finish in the background.
            self._load_task.cancel()
        self.engine.shutdown()

    async def serve(self, on_start: object = None) -> None:
        """Run until SIGTERM/SIGINT, then drain (the ``splitfc cloud serve`` main loop)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        endpoints = await self.start()
        if callable(on_start):
            on_start(endpoints)
        assert self._load_task is not None
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, self._load_task}, return_when=asyncio.FIRST_COMPLETED)
        if self.engine.load_error:
            # A server that can never become ready should say so and exit, not idle as NOT_SERVING.
            stopped.cancel()
            await self.stop(0)
            raise SplitfcError(f"cloud could not load its models: {self.engine.load_error}")
        await stopped
        await self.stop()


class ServerThread:
    """A `CloudServer` on its own event loop in a background thread (tests, demo, benchmark)."""

    def __init__(
        self, settings: CloudSettings | None = None, model_loader: ModelLoader = default_model_loader,
        logger: logging.Logger | None = None,
    ) -> None:
        self.server = CloudServer(settings, model_loader, logger)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="splitfc-cloud", daemon=True)
        self.endpoints: Endpoints | None = None

    def _call(self, coro: object, timeout: float | None = None) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self, wait_ready: bool = True, timeout: float = 600.0) -> Endpoints:
        self._thread.start()
        self.endpoints = self._call(self.server.start(), timeout)  # type: ignore[assignment]
        if wait_ready:
            self._call(self.server.wait_ready(timeout), timeout + 5)
        assert self.endpoints is not None
        return self.endpoints

    def wait_ready(self, timeout: float = 600.0) -> None:
        self._call(self.server.wait_ready(timeout), timeout + 5)

    def stop(self, grace: float = 5.0) -> None:
        if self._thread.is_alive():
            try:
                self._call(self.server.stop(grace), grace + 30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
