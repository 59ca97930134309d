"""A real HTTP server that receives webhooks and verifies them with the `standardwebhooks`
library; `answers` scripts its status codes (then 204), `delay` makes it slow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


class Receiver:
    def __init__(self) -> None:
        self.secret: str | None = None
        self.answers: list[int] = []
        self.delay = 0.0
        self.arrived = 0  # requests that reached the handler (before the delay)
        self.verified: list[tuple[dict, dict]] = []  # (payload, headers) of every request that verified
        self.rejected: list[str] = []
        self.lock = threading.Lock()


@contextmanager
def receiver() -> Iterator[tuple[str, Receiver]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with state.lock:
                state.arrived += 1
            time.sleep(state.delay)
            with state.lock:
                try:
                    payload = Webhook(state.secret).verify(body, headers)
                    state.verified.append((payload, headers))
                except Exception as exc:  # noqa: BLE001 - any failure to verify is a rejection
                    state.rejected.append(repr(exc))
                code = state.answers.pop(0) if state.answers else 204
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", state
    finally:
        server.shutdown()
        server.server_close()
