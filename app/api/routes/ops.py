"""Operations endpoints (no auth, not in the OpenAPI schema): readiness and Prometheus metrics.
`/healthz` (the process is up) stays in app/main.py."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.services.readiness import readiness

router = APIRouter(include_in_schema=False)


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
