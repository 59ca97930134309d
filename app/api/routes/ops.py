"""Operations: the x-request-id header and access log, request latency, readiness, Prometheus
metrics (no auth, not in the OpenAPI schema), graceful shutdown. `/healthz` (the process is up)
stays in app/main.py."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.logs import request_id_var
from app.core.metrics import REQUEST_LATENCY, registry_for
from app.core.shutdown import CloseStreamsOnShutdown, ShutdownSignal
from app.services.readiness import readiness
from app.services.storage import storage_for

router = APIRouter(include_in_schema=False)
access_log = logging.getLogger("whetstone.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Every response carries x-request-id (the client's, or a new one); so does every log line
    written while handling it. One access log line and one latency sample per request.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the app in
    a task group of its own and wraps every `receive` in another (one per network chunk of an
    upload's body), which cost more than the rest of the request path put together."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        if not rid or not _REQUEST_ID.fullmatch(rid):  # never echo (or log) a client's newlines or markup
            rid = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", "<unmatched>")
                seconds = time.perf_counter() - started  # streams: until the response starts
                REQUEST_LATENCY.labels(scope["method"], route, str(status)).observe(seconds)
                access_log.info("%s %s %s", scope["method"], scope["path"], status,
                                extra={"method": scope["method"], "route": route, "status": status,
                                       "duration_ms": round(seconds * 1000, 1)})
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    if state.shutdown.is_set:
        return JSONResponse({"status": "shutting_down", "checks": {}, "failed": []}, status_code=503)
    checks = await run_in_threadpool(readiness, state.settings, state.storage)
    failed = [name for name, result in checks.items() if result != "ok"]
    return JSONResponse({"status": "unavailable" if failed else "ready", "checks": checks, "failed": failed},
                        status_code=503 if failed else 200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, settings: Settings) -> None:
    """Give an app (the API, the inference server) /readyz, /metrics and graceful shutdown;
    run it with app.core.shutdown.run_server."""
    if not hasattr(app.state, "storage"):
        app.state.storage = storage_for(settings, "files")
    app.state.shutdown = ShutdownSignal()
    app.state.metrics_registry = registry_for(settings)
    app.add_middleware(CloseStreamsOnShutdown, signal=app.state.shutdown)
    app.add_middleware(RequestIdMiddleware)  # outside the stream closer
    app.include_router(router)
