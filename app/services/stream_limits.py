"""Limits on job event streams (SSE, issue 16): a cap on the streams one API key holds open in
this process (429 beyond it), a maximum lifetime (the stream ends cleanly; the client reconnects
with Last-Event-ID and misses nothing), and a send timeout that drops a client which stopped
reading (its writes would otherwise wait forever on a full socket buffer)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.core.errors import APIError

log = logging.getLogger("whetstone.events")


class StreamSlots:
    """Open streams per key (sha256 of the key), in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, identity: str) -> Callable[[], None]:
        """Take a slot (429 when the key has `limit` open); returns the release, safe to call twice."""
        with self._lock:
            held = self._open.get(identity, 0)
            if self.limit > 0 and held >= self.limit:
                raise APIError(429, f"This API key already has {held} event streams open (the limit is "
                               f"{self.limit}); close one first.", type="rate_limit_error", param="stream",
                               code="too_many_streams")
            self._open[identity] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._open.get(identity, 1) - 1
                if left:
                    self._open[identity] = left
                else:
                    self._open.pop(identity, None)

        return release

    def open_count(self, identity: str) -> int:
        with self._lock:
            return self._open.get(identity, 0)


async def bounded(stream: AsyncIterator[str], *, lifetime: float, release: Callable[[], None]) -> AsyncIterator[str]:
    """`stream` until it ends or `lifetime` seconds have passed (0: no limit); the slot is
    released however it ends."""
    deadline = time.monotonic() + lifetime if lifetime > 0 else None
    try:
        while True:
            if deadline is None:
                item = await anext(stream, None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.info("event stream reached its lifetime of %ss", lifetime)
                    return  # no [DONE]: the client reconnects with Last-Event-ID
                try:
                    item = await asyncio.wait_for(anext(stream, None), remaining)
                except TimeoutError:
                    continue
            if item is None:
                return
            yield item
    finally:
        release()
        await stream.aclose()


class EventStreamResponse(StreamingResponse):
    """text/event-stream that gives its stream slot back however it ends, also when the client
    went away before the stream started (then `bounded` never ran)."""

    def __init__(self, content: AsyncIterator[str], *, headers: dict[str, str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class DropSlowReaders:
    """ASGI middleware, outermost (the server's own send is the one that waits on a full socket):
    every write of an event-stream response must finish within `timeout` seconds, else the
    response is abandoned and the server closes the connection."""

    def __init__(self, app, timeout: float) -> None:  # noqa: ANN001
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout <= 0:
            await self.app(scope, receive, send)
            return
        streaming = False

        async def timed_send(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                streaming = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message.get("headers", []))
            if not streaming:
                await send(message)
                return
            try:
                async with asyncio.timeout(self.timeout):
                    await send(message)
            except TimeoutError:
                raise _SlowReader from None

        try:
            await self.app(scope, receive, timed_send)
        except _SlowReader:
            log.warning("dropped an event stream whose client read nothing for %ss: %s", self.timeout, scope["path"])


class _SlowReader(Exception):
    pass


def limited_event_stream(request, stream: AsyncIterator[str]) -> EventStreamResponse:  # noqa: ANN001
    """`stream` as an SSE response under the caller's key's stream cap (429 when it is full) and
    the settings' lifetime (the send timeout is DropSlowReaders', installed by create_app)."""
    from app.core.rate_limit import key_identity

    settings = request.app.state.settings
    identity = key_identity(request.scope["headers"]) or "anonymous"
    release = request.app.state.stream_slots.acquire(identity)
    return EventStreamResponse(bounded(stream, lifetime=settings.sse_max_stream_seconds, release=release),
                               on_close=release, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
