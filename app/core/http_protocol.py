"""uvicorn's httptools protocol, handing a request body to the app with fewer copies.

uvicorn 0.54 has httptools (llhttp) parse every body byte, and httptools hands each piece of body
on as a new bytes object (a copy); uvicorn then appends it to a bytearray (a second copy) and
hands the app `bytes(bytearray)` (a third), all on the event loop, for every byte of an upload.
Here:
- a body of a known length (Content-Length, no Transfer-Encoding) is taken past the parser once
  its headers are parsed: the bytes the socket gave are handed on as they are, until the body's
  length is reached. The parser, which still waits for that body, is then replaced by a new one
  for the connection's next request (and whatever followed the body in the same read goes to it);
- the chunks are kept as they came: when the app asks, one waiting chunk is handed on as it is,
  several are joined once.
As in uvicorn, reading stops once more than 64 KiB wait, so nearly always just one waits.
`HttpProtocol`, the one the server runs, has the socket read into a buffer of READ_SIZE bytes
(asyncio's BufferedProtocol) rather than into uvloop's own 256 KB: the same one copy out of it
per read, and a quarter of the reads, and of the app's turns per body, for a large upload. This
leans on uvicorn's internals: its version is pinned in pyproject.toml, and
tests/app/test_http_protocol.py checks the bodies an app receives.

bench/http_body.py measures the HTTP layer alone against uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import threading

import httptools
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
    _length: int | None = None  # the current request's Content-Length (None: unknown, or chunked)
    _parsed = 0  # body bytes the parser has reported for it
    _complete = True  # the current request's body has all come
    _left = 0  # body bytes to take past the parser

    def data_received(self, data: bytes) -> None:
        if not self._left:
            super().data_received(data)
            if not self._complete and self._length is not None:  # (set once its cycle exists)
                self._left = self._length - self._parsed  # the rest of this body: past the parser
            return
        self._unset_keepalive_if_required()
        body = data if len(data) <= self._left else data[:self._left]
        self._left -= len(body)
        self._hand_on(body)
        if not self._left:
            self.parser = httptools.HttpRequestParser(self)  # the old one still waits for this body
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # (as uvicorn's own)
            self.on_message_complete()
            if len(body) < len(data):
                self.data_received(data[len(body):])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._length, self._parsed, self._complete = None, 0, False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        framing = [(name, value) for name, value in self.headers if name in (b"content-length", b"transfer-encoding")]
        if len(framing) == 1 and framing[0][0] == b"content-length" and framing[0][1].isdigit() \
                and not self.parser.should_upgrade():
            self._length = int(framing[0][1])  # one Content-Length and no Transfer-Encoding (llhttp checked it)

    def on_body(self, body: bytes) -> None:
        self._parsed += len(body)
        self._hand_on(body)

    def on_message_complete(self) -> None:
        self._complete = True
        super().on_message_complete()

    def _hand_on(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if not isinstance(cycle.body, _Chunks):  # a new request, or the app has just received
            cycle.body = _Chunks()
        cycle.body.append(body)
        if cycle.body.size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()


READ_SIZE = 1 << 20  # bytes one socket read may take


class _ReadBuffer(threading.local):
    """One read buffer per event-loop thread: a read's bytes are copied out of it at once."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_READ_BUFFER = _ReadBuffer()


class HttpProtocol(asyncio.BufferedProtocol):
    """BodyProtocol, with reads of up to READ_SIZE bytes into its thread's buffer. uvloop reads
    into a protocol's buffer only when it is not an `asyncio.Protocol`, as uvicorn's are: hence a
    protocol of its own that hands each read on to a BodyProtocol."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - uvicorn's, for BodyProtocol
        self.http = BodyProtocol(*args, **kwargs)
        self._view = _READ_BUFFER.view  # (made on the loop's thread, which reads into it)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.http.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.http.eof_received()

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.http.data_received(self._view[:nbytes].tobytes())
