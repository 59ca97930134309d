"""Requests per minute per API key (issue 16).

Fixed one-minute windows per key (the sha256 of the bearer secret, as stored): the n-th request
of a window beyond `rate_limit_requests_per_minute` gets 429 with Retry-After. Every response to
a request that carries a key has OpenAI's headers: x-ratelimit-limit-requests,
x-ratelimit-remaining-requests, x-ratelimit-reset-requests (e.g. "17s").

Counted in Redis (INCR on one key per window, shared by every API process) when Redis is
configured (events_redis_url or a Redis broker), else in this process. If Redis stops answering,
this process counts on its own until it is back, rather than refusing or admitting everyone.
Requests without a key are not counted here (they get 401, or are /healthz-style probes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.errors import error_body

log = logging.getLogger("whetstone.ratelimit")
WINDOW = 60


def key_identity(headers: list[tuple[bytes, bytes]]) -> str | None:
    """sha256 hex of the bearer secret, or None when the request carries no key. The FIRST
    Authorization header, the one authentication reads: a second one cannot pick another count."""
    value = next((v for k, v in headers if k == b"authorization"), b"").decode("latin-1")
    scheme, _, secret = value.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return hashlib.sha256(secret.strip().encode()).hexdigest()


class LocalCounter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, identity: str, window: int) -> int:
        if len(self._counts) > 10_000:  # drop past windows
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        count = self._counts.get((identity, window), 0) + 1
        self._counts[(identity, window)] = count
        return count


class RedisCounter:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[int, object] = {}  # one client per event loop

    async def hit(self, identity: str, window: int) -> int:
        import redis.asyncio as aioredis

        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = aioredis.Redis.from_url(self.url, socket_connect_timeout=1,
                                                                   socket_timeout=1)
        key = f"whetstone:ratelimit:{identity[:32]}:{window}"
        async with client.pipeline(transaction=True) as pipe:
            count, _ = await pipe.incr(key).expire(key, WINDOW * 2).execute()
        return int(count)


class RateLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        from app.services.event_bus import redis_url

        self.app = app
        self.limit = settings.rate_limit_requests_per_minute
        url = redis_url(settings)
        self.shared = RedisCounter(url) if url else None
        self.local = LocalCounter()
        self._redis_failed_at = 0.0

    async def _count(self, identity: str, window: int) -> int:
        if self.shared is not None and time.monotonic() - self._redis_failed_at > 5:
            try:
                return await self.shared.hit(identity, window)
            except Exception as exc:  # noqa: BLE001 - any Redis trouble: count here for a while
                log.warning("rate limit: Redis unavailable (%s); counting in this process", type(exc).__name__)
                self._redis_failed_at = time.monotonic()
        return await self.local.hit(identity, window)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity = key_identity(scope["headers"]) if scope["type"] == "http" and self.limit > 0 else None
        if identity is None:
            await self.app(scope, receive, send)
            return
        now = time.time()
        window = int(now // WINDOW)
        reset = max(1, math.ceil((window + 1) * WINDOW - now))
        count = await self._count(identity, window)
        headers = [(b"x-ratelimit-limit-requests", str(self.limit).encode()),
                   (b"x-ratelimit-remaining-requests", str(max(0, self.limit - count)).encode()),
                   (b"x-ratelimit-reset-requests", f"{reset}s".encode())]
        if count > self.limit:
            body = json.dumps(error_body(
                f"Rate limit reached: {self.limit} requests per minute for this API key. "
                f"Try again in {reset}s.", "requests", None, "rate_limit_exceeded")).encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", str(reset).encode()), *headers]})
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, with_headers)
