"""Forward inference requests to a separate `whetstone inference` process
(WHETSTONE_INFERENCE_URL), streaming responses through as they arrive.

The inference process shares the database and the data directory, so it authenticates the
same key and finds the same adapters; the API forwards the request as it came.
"""

from __future__ import annotations

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from app.core.errors import APIError

_FORWARDED_REQUEST = ("authorization", "content-type", "x-request-id", "openai-organization", "openai-project")
_FORWARDED_RESPONSE = ("content-type", "retry-after", "cache-control", "x-accel-buffering")


def _client(request: Request) -> httpx.AsyncClient:
    state = request.app.state
    if getattr(state, "inference_client", None) is None:
        timeout = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None)
        state.inference_client = httpx.AsyncClient(base_url=state.settings.inference_url.rstrip("/"), timeout=timeout)
    return state.inference_client


async def forward(request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_REQUEST}
    client = _client(request)
    upstream = client.build_request(request.method, request.url.path, params=request.query_params,
                                    content=await request.body(), headers=headers)
    try:
        response = await client.send(upstream, stream=True)
    except httpx.TransportError as exc:
        raise APIError(503, f"The inference service is unavailable ({type(exc).__name__}). Please retry shortly.",
                       type="server_error", code="inference_unavailable", headers={"Retry-After": "5"}) from exc
    out_headers = {k: v for k, v in response.headers.items() if k.lower() in _FORWARDED_RESPONSE}
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        # Closing the upstream response when our client goes away stops its generation there too.
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=out_headers,
                                 background=BackgroundTask(response.aclose))
    content = await response.aread()
    await response.aclose()
    return Response(content, status_code=response.status_code, headers=out_headers)
