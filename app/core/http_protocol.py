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

`HttpProtocol` also offers the app, for a body of known length, to have the rest of it read off
the socket straight into buffers of the app's own (`BodyInto`, in scope["extensions"][INTO]):
no copy at all on the way but the kernel's. The upload route has a file part's data read into its
blocks this way (app/services/multipart_stream.py).

bench/http_body.py measures the HTTP layer alone against uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol

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

    def __len__(self) -> int:
        return self.size


INTO = "whetstone.body_into"  # the scope["extensions"] key of a request's BodyInto


class IntoTarget(Protocol):
    """Where BodyInto reads a body: `buffer()` the (non-empty) room the next read may fill;
    `landed(n)` after n bytes landed at its start: returns those of them it does not keep (b""
    for none), which the app then receives as usual; `ended()` once reading into it has ended."""

    def buffer(self) -> memoryview: ...
    def landed(self, n: int) -> bytes: ...
    def ended(self) -> None: ...


class BodyInto:
    """Offered to the app for a body of known length (HttpProtocol only): `start(target)` has the
    socket read the rest of the body into `target`'s buffers, until the target gives bytes back,
    the body is complete or the client is gone (then `target.ended()`); the bytes after any given
    back come to `receive` as usual. False: not now (body bytes already wait, or the client waits
    for its 100 Continue: receive first).
    `pause()` / `resume()` the reading meanwhile (the target's flow control); `stop(target)` ends
    it early (a request given up on)."""

    def __init__(self, http: BodyProtocol, cycle: object) -> None:
        self.http, self.cycle = http, cycle

    def start(self, target: IntoTarget) -> bool:
        http, cycle = self.http, self.cycle
        if http.cycle is not cycle or not http._left or http.into is not None or len(cycle.body) \
                or cycle.waiting_for_100_continue or cycle.disconnected or cycle.response_complete:
            return False
        http.into = target
        http.flow.resume_reading()
        return True

    def pause(self) -> None:
        self.http.flow.pause_reading()

    def resume(self) -> None:
        self.http.flow.resume_reading()

    def stop(self, target: IntoTarget) -> None:
        if self.http.into is target:
            self.http.into = None


class BodyProtocol(HttpToolsProtocol):
    _length: int | None = None  # the current request's Content-Length (None: unknown, or chunked)
    _parsed = 0  # body bytes the parser has reported for it
    _complete = True  # the current request's body has all come
    _left = 0  # body bytes to take past the parser
    offers_into = False  # whether its reads go through `landed` when `into` is set (HttpProtocol's do)
    into: IntoTarget | None = None  # where the socket reads the body now (BodyInto), if anywhere

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
            self._body_done()
            if len(body) < len(data):
                self.data_received(data[len(body):])

    def landed(self, n: int) -> None:
        """`n` body bytes were read into `into.buffer()`."""
        self._unset_keepalive_if_required()
        self._left -= n
        rest = self.into.landed(n)
        if rest or not self._left:
            self._end_into()
            if rest:
                self._hand_on(rest)
            if not self._left:
                self._body_done()

    def _end_into(self) -> None:
        into, self.into = self.into, None
        into.ended()

    def _body_done(self) -> None:
        self.parser = httptools.HttpRequestParser(self)  # the old one still waits for this body
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # (as uvicorn's own)
        self.on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.into is not None:
            self._end_into()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._length, self._parsed, self._complete = None, 0, False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        framing = [(name, value) for name, value in self.headers if name in (b"content-length", b"transfer-encoding")]
        if len(framing) == 1 and framing[0][0] == b"content-length" and framing[0][1].isdigit() \
                and not self.parser.should_upgrade():
            self._length = int(framing[0][1])  # one Content-Length and no Transfer-Encoding (llhttp checked it)
            if self.offers_into:
                self.scope.setdefault("extensions", {})[INTO] = BodyInto(self, self.cycle)

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
        self.http.offers_into = True
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
        into = self.http.into
        return self._view if into is None else into.buffer()[:self.http._left]

    def buffer_updated(self, nbytes: int) -> None:
        if self.http.into is None:
            self.http.data_received(self._view[:nbytes].tobytes())
        else:
            self.http.landed(nbytes)
