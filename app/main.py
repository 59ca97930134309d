"""Builds the FastAPI application."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request

from app.api.routes import evaluations, files, fine_tuning, inference
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.services.event_bus import configure_publisher
from app.services.inference import InferenceEngine
from app.services.storage import LocalStorage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(title="Whetstone", version="0.1.0", description="Self-hosted fine-tuning, OpenAI-compatible API")
    app.state.settings = settings
    app.state.storage = LocalStorage(settings.storage_dir)
    app.state.engine = InferenceEngine(settings)
    configure_publisher(settings)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    install_error_handlers(app)
    for module in (files, fine_tuning, inference, evaluations):
        app.include_router(module.router)
    return app
