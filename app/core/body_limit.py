"""Request body size limits, enforced before a body is stored (issue 16).

An ASGI middleware: a request whose Content-Length is over its route's limit gets 413 at once,
without a byte of the body read; a request with no length (chunked) is counted as it arrives, and
the moment it passes the limit the app is told the client went away (so the multipart parser
stops and nothing reaches storage) and the client gets the same 413.

Limits: POST /v1/files -> max_upload_bytes; POST /v1/uploads/{id}/parts -> max_upload_part_bytes;
anything else -> max_request_body_bytes. Multipart framing (boundaries, part headers) gets a little
room on top of the file limits, so a file of exactly the limit still fits.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.errors import error_body

FRAMING = 64 << 10
_PARTS = re.compile(r"^/v1/uploads/[^/]+/parts/?$")


def body_limit(settings: Settings, path: str) -> tuple[int, int, str | None, str]:
    """(bytes allowed on the wire, the configured limit, param, code) for a body sent to `path`."""
    if path.rstrip("/") == "/v1/files":
        return settings.max_upload_bytes + FRAMING, settings.max_upload_bytes, "file", "file_too_large"
    if _PARTS.match(path):
        return settings.max_upload_part_bytes + FRAMING, settings.max_upload_part_bytes, "data", "part_too_large"
    return settings.max_request_body_bytes, settings.max_request_body_bytes, None, "request_too_large"


async def _send_413(send: Send, limit: int, param: str | None, code: str) -> None:
    what = {"file": "The file", "data": "The part"}.get(param or "", "The request body")
    body = json.dumps(error_body(f"{what} is larger than the limit of {limit} bytes.",
                                 "invalid_request_error", param, code)).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit, configured, param, code = body_limit(self.settings, scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:  # (servers refuse other lengths)
            await _send_413(send, configured, param, code)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True  # the app stops reading and stores nothing; the client gets 413
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app makes of the "disconnect", the client gets the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _send_413(send, configured, param, code)
