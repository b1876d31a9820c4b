"""The cloud's HTTP side (FastAPI): /healthz, /readyz, /v1/info, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict

from splitfc import __version__
from splitfc.cloud.metrics import CONTENT_TYPE_LATEST, CloudMetrics
from splitfc.cloud.service import SplitInferenceService


def create_app(service: SplitInferenceService, metrics: CloudMetrics) -> FastAPI:
    """The HTTP app of one server: liveness, readiness, info and Prometheus metrics."""
    app = FastAPI(title="splitfc cloud", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: 200 once every model is loaded, else 503."""
        body: dict[str, Any] = {
            "ready": service.ready,
            "loaded": sorted(service.models),
            "splits": service.split_ids,
        }
        if service.load_error:
            body["error"] = service.load_error
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/v1/info")
    def info() -> dict[str, Any]:
        """Models, splits, codecs and limits (the gRPC GetInfo answer as JSON)."""
        return MessageToDict(
            service.info(), always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
