"""Builds the FastAPI application."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.routes import evaluations, files, fine_tuning, inference, ops
from app.api.routes import legacy as legacy_fine_tunes
from app.api.routes import admin, uploads, webhooks
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.body_limit import BodyLimit
from app.core.rate_limit import RateLimit
from app.protocol.common import ERROR_RESPONSES
from app.dashboard import install as install_dashboard
from app.services.event_bus import configure_publisher
from app.services.inference import InferenceEngine
from app.services.stream_limits import DropSlowReaders, StreamSlots
from app.services.storage import storage_for
from app.services.upload_check_process import POOL as UPLOAD_CHECKS


def _lifespan(settings: Settings):
    """The webhook sender runs while the app does; the idle upload check processes end with it."""
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        from app.services.webhook_sender import WebhookSender

        sender = WebhookSender(settings).start() if settings.webhook_sender else None
        yield
        if sender is not None:
            sender.stop()
        UPLOAD_CHECKS.close()  # the idle upload check processes end (and are waited for) with the app

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(title="Whetstone", version="0.1.0", description="Self-hosted fine-tuning, OpenAI-compatible API",
                  lifespan=_lifespan(settings))
    app.state.settings = settings
    app.state.storage = storage_for(settings, "files")
    app.state.engine = InferenceEngine(settings)
    configure_publisher(settings)
    # Quotas (issue 16): body sizes before anything is read, requests per minute per key. Added
    # before ops.install, so the request-id middleware is outside them and their answers carry it.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(RateLimit, settings=settings)
    app.state.stream_slots = StreamSlots(settings.max_streams_per_key)
    # Request ids, access logs, request latency, /readyz, /metrics, graceful shutdown (issue 7).
    ops.install(app, settings)
    app.add_middleware(DropSlowReaders, timeout=settings.sse_send_timeout)  # outermost: the server's send

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    install_error_handlers(app)
    for module in (files, fine_tuning, inference, evaluations, legacy_fine_tunes, uploads, webhooks, admin):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    install_dashboard(app)  # the web dashboard at / (issue 10)
    return app


def create_inference_app(settings: Settings | None = None) -> FastAPI:
    """`whetstone inference`: only the inference routes, over the same database and data dir."""
    settings = (settings or get_settings()).model_copy(update={"inference_url": ""})
    settings.ensure_dirs()
    app = FastAPI(title="Whetstone inference", version="0.1.0")
    app.state.settings = settings
    app.state.engine = InferenceEngine(settings)
    app.add_middleware(BodyLimit, settings=settings)  # (the API in front counts requests per key)
    ops.install(app, settings)  # request ids, access log, /readyz, /metrics, graceful shutdown

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    install_error_handlers(app)
    app.include_router(inference.router, responses=ERROR_RESPONSES)
    return app
