"""uvicorn's httptools protocol, handing a request body to the app with two copies fewer.

uvicorn 0.54 appends every body chunk httptools gives it to a bytearray (a copy) and hands the
app `bytes(bytearray)` (a second copy), on the event loop, for every byte of an upload. Here the
chunks are kept as they came: when the app asks, one waiting chunk is handed on as it is, several
are joined once. As in uvicorn, reading stops once more than 64 KiB wait, so nearly always just
one waits. This leans on uvicorn's internals: its version is pinned in pyproject.toml, and
tests/app/test_http_protocol.py checks the bodies an app receives.

bench/http_body.py measures the HTTP layer alone against uvicorn's own protocol: here a 1 GB body
came through 1.2-2.1x as fast, in 0.44-0.75x the server's CPU time (two runs).
"""

from __future__ import annotations

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Chunks:
    """Body chunks the app has not received yet. uvicorn's `receive` hands the app `bytes()` of
    it, then starts the next batch with an empty bytearray, which `on_body` replaces again."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def append(self, chunk: bytes) -> None:
        self.parts.append(chunk)
        self.size += len(chunk)

    def __bytes__(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class BodyProtocol(HttpToolsProtocol):
    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if not isinstance(cycle.body, _Chunks):  # a new request, or the app has just received
            cycle.body = _Chunks()
        cycle.body.append(body)
        if cycle.body.size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
