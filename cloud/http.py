"""The cloud's HTTP side (FastAPI): /healthz, /readyz, /v1/info, /metrics.

With bearer tokens configured, every route but /healthz and /readyz needs ``Authorization: Bearer
<token>`` (401 otherwise); Prometheus scrapes /metrics with ``authorization: {credentials_file: ...}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict

from splitfc import __version__
from splitfc.cloud.engine import InferenceEngine
from splitfc.cloud.metrics import CONTENT_TYPE_LATEST, CloudMetrics
from splitfc.cloud.security import TokenSet


def create_app(engine: InferenceEngine, metrics: CloudMetrics, tokens: TokenSet | None = None) -> FastAPI:
    """The HTTP app of one server: liveness, readiness, info and Prometheus metrics."""
    app = FastAPI(title="splitfc cloud", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    def require_token(request: Request) -> None:
        """401 unless the request carries one of the configured bearer tokens (no-op without tokens)."""
        if not tokens:
            return
        index, reason = tokens.check_header(request.headers.get("authorization"))
        if index is None:
            metrics.auth_failures.labels("http", reason).inc()
            raise HTTPException(401, f"{reason} bearer token", headers={"WWW-Authenticate": "Bearer"})

    protected = [Depends(require_token)]

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
