"""Builds the FastAPI application."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from app.api.routes import evaluations, files, fine_tuning, inference, ops
from app.api.routes import legacy as legacy_fine_tunes
from app.api.routes import uploads, webhooks
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.logs import request_id_var
from app.core.metrics import REQUEST_LATENCY, registry_for
from app.core.shutdown import CloseStreamsOnShutdown, ShutdownSignal
from app.services.inference import InferenceEngine
from app.services.storage import storage_for

access_log = logging.getLogger("whetstone.access")


def _background_senders(settings: Settings):
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        from app.services.webhook_sender import WebhookSender

        sender = WebhookSender(settings).start() if settings.webhook_sender else None
        yield
        if sender is not None:
            sender.stop()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(title="Whetstone", version="0.1.0", description="Self-hosted fine-tuning, OpenAI-compatible API",
                  lifespan=_background_senders(settings))
    app.state.settings = settings
    app.state.storage = storage_for(settings, "files")
    app.state.engine = InferenceEngine(settings)
    # Operations (issue 7): graceful shutdown, metrics, request ids in logs.
    app.state.shutdown = ShutdownSignal()
    app.state.metrics_registry = registry_for(settings)
    app.add_middleware(CloseStreamsOnShutdown, signal=app.state.shutdown)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        request.state.request_id = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        try:
            response = await call_next(request)
            route = getattr(request.scope.get("route"), "path", "<unmatched>")
            seconds = time.perf_counter() - started
            REQUEST_LATENCY.labels(request.method, route, str(response.status_code)).observe(seconds)
            access_log.info("%s %s %s", request.method, request.url.path, response.status_code,
                            extra={"method": request.method, "route": route, "status": response.status_code,
                                   "duration_ms": round(seconds * 1000, 1)})
        finally:
            request_id_var.reset(token)
        response.headers["x-request-id"] = rid
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    install_error_handlers(app)
    for module in (files, fine_tuning, inference, evaluations, legacy_fine_tunes, uploads, webhooks, ops):
        app.include_router(module.router)
    return app


def create_inference_app(settings: Settings | None = None) -> FastAPI:
    """`whetstone inference`: only the inference routes, over the same database and data dir."""
    settings = (settings or get_settings()).model_copy(update={"inference_url": ""})
    settings.ensure_dirs()
    app = FastAPI(title="Whetstone inference", version="0.1.0")
    app.state.settings = settings
    app.state.engine = InferenceEngine(settings)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    install_error_handlers(app)
    app.include_router(inference.router)
    return app
