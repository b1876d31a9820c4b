"""The cloud's HTTP side (FastAPI): /healthz, /readyz, /v1/info, /metrics.

With bearer tokens configured, every route but /healthz and /readyz needs ``Authorization: Bearer
<token>`` (401 otherwise); Prometheus scrapes /metrics with ``authorization: {credentials_file: ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict

from splitfc import __version__
from splitfc.cloud.engine import InferenceEngine
from splitfc.cloud.metrics import CONTENT_TYPE_LATEST, CloudMetrics
from splitfc.cloud.security import TokenSet


def _token_check(tokens: TokenSet | None, auth_failures: Any) -> Callable[[Request], None]:
    def require_token(request: Request) -> None:
        """401 unless the request carries one of the configured bearer tokens (no-op without tokens)."""
        if not tokens:
            return
        index, reason = tokens.check_header(request.headers.get("authorization"))
        if index is None:
            auth_failures.labels("http", reason).inc()
            raise HTTPException(401, f"{reason} bearer token", headers={"WWW-Authenticate": "Bearer"})

    return require_token


def create_app(engine: InferenceEngine, metrics: CloudMetrics, tokens: TokenSet | None = None) -> FastAPI:
    """The HTTP app of one server: liveness, readiness, info and Prometheus metrics."""
    app = FastAPI(title="splitfc cloud", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    protected = [Depends(_token_check(tokens, metrics.auth_failures))]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: 200 once every model is loaded, else 503."""
        body: dict[str, Any] = {
            "ready": engine.ready,
            "loaded": sorted(engine.models),
            "splits": engine.split_ids,
        }
        if engine.load_error:
            body["error"] = engine.load_error
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @app.get("/v1/info", dependencies=protected)
    def info() -> dict[str, Any]:
        """Models, splits, codecs and limits (the gRPC GetInfo answer as JSON)."""
        return MessageToDict(
            engine.info(), always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )

    @app.get("/metrics", dependencies=protected)
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


class EngineProcesses(Protocol):
    """What the HTTP side of several engine processes reads from their supervisor (`splitfc.cloud.processes`)."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(every engine process serving, the /readyz body)."""
        ...

    def info(self) -> Any:
        """A serving process's ``GetInfo`` answer (`ServerInfo`), or None while none serves."""
        ...

    def exposition(self) -> bytes:
        """/metrics of all processes together (Prometheus text)."""
        ...


def create_processes_app(processes: EngineProcesses, auth_failures: Any, tokens: TokenSet | None = None) -> FastAPI:
    """The HTTP app of several engine processes behind one port, served by their supervisor: /healthz (the
    supervisor answers), /readyz (200 while every engine process serves), /v1/info (one serving process's
    GetInfo) and /metrics (all processes, Prometheus multiprocess mode)."""
    app = FastAPI(title="splitfc cloud", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    protected = [Depends(_token_check(tokens, auth_failures))]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready, body = processes.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/info", dependencies=protected)
    def info() -> Any:
        answer = processes.info()
        if answer is None:
            return JSONResponse({"error": "no engine process is serving yet"}, status_code=503)
        return MessageToDict(answer, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)

    @app.get("/metrics", dependencies=protected)
    def prometheus() -> Response:
        return Response(processes.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
