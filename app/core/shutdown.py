"""Graceful API shutdown.

On SIGTERM the server stops accepting connections, lets in-flight requests finish (up to
`shutdown_grace` seconds, then cancels them), and closes every job-event stream (SSE on
`.../events`) at once, at an event boundary, with a proper end of the HTTP response: the client
reconnects elsewhere with Last-Event-ID and misses nothing. `/readyz` answers 503 from the
signal on, so a load balancer stops sending new requests.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.http_protocol import HttpProtocol

log = logging.getLogger("whetstone.shutdown")


class ShutdownSignal:
    """Set once, from a signal handler; awaited by open streams on the server's event loop."""

    def __init__(self) -> None:
        self.is_set = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def trigger(self) -> None:
        self.is_set = True
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        event = asyncio.Event()
        self._waiters.append((asyncio.get_running_loop(), event))
        try:
            if not self.is_set:
                await event.wait()
        finally:
            self._waiters.remove((asyncio.get_running_loop(), event))


def _is_event_stream(message: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"])


class CloseStreamsOnShutdown:
    """ASGI middleware: ends SSE responses on paths ending in /events when shutdown begins."""

    def __init__(self, app: ASGIApp, signal: ShutdownSignal) -> None:
        self.app = app
        self.signal = signal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].rstrip("/").endswith("/events"):
            await self.app(scope, receive, send)
            return
        lock = asyncio.Lock()
        streaming = asyncio.Event()
        closed = False

        async def guarded_send(message: Message) -> None:
            async with lock:
                if closed:
                    raise asyncio.CancelledError
                if message["type"] == "http.response.start" and _is_event_stream(message):
                    streaming.set()
                await send(message)

        app_task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        stop_task = asyncio.ensure_future(self._stream_then_shutdown(streaming))
        try:
            done, _ = await asyncio.wait({app_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if app_task in done:
                app_task.result()
                return
            async with lock:  # between two events: never half of one
                closed = True
                app_task.cancel()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            log.info("closed an event stream for shutdown: %s", scope["path"])
            try:
                await app_task
            except asyncio.CancelledError:
                pass
        finally:
            stop_task.cancel()
            if not app_task.done():
                app_task.cancel()

    async def _stream_then_shutdown(self, streaming: asyncio.Event) -> None:
        await streaming.wait()
        await self.signal.wait()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, signal: ShutdownSignal) -> None:
        super().__init__(config)
        self.shutdown_signal = signal

    def handle_exit(self, sig, frame) -> None:  # noqa: ANN001
        self.shutdown_signal.trigger()
        super().handle_exit(sig, frame)


def server_config(app, host: str, port: int, grace: float) -> uvicorn.Config:  # noqa: ANN001
    """How the API is served; access lines come from app/api/routes/ops.py, not uvicorn."""
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                          timeout_graceful_shutdown=grace, http=HttpProtocol)


def run_server(app, host: str, port: int, grace: float) -> None:  # noqa: ANN001
    """Run `app` (built by create_app) until SIGTERM/SIGINT, then shut down gracefully."""
    GracefulServer(server_config(app, host, port, grace), app.state.shutdown).run()
