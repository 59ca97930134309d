"""A multipart/form-data request body read as it arrives, with one file part handed on in blocks.

FastAPI's `UploadFile` has Starlette spool the whole file to a temporary file first (one thread
hop per network chunk once past 1 MB) and the route then reads it back: every byte is written
and read twice before the route sees it. Here python-multipart parses the body on the event
loop, small fields are kept (at most MAX_FIELD bytes each), and the file part's bytes are copied,
as they arrive, into blocks (`upload_blocks.py`): reused page-aligned buffers, the one copy of its
bytes the server makes, that storage can write to the disk as they are. Each block goes to the
caller's lanes (for a file: its line check and its write), each in a worker thread, a few blocks
apart at most, so memory stays at a few blocks whatever the file's size.

Where the server offers it (app/core/http_protocol.py, BodyInto), the file's data is read off
the socket straight into the blocks, not copied at all, up to the first delimiter or a CR near
the end of a read that may begin one. The bytes from there on go through the parser as usual.

A lane that raises (a bad line, a file too large) stops the handing on; the rest of the body
is still read (and dropped), so the client, still sending, gets the answer rather than a reset
connection. The first error is returned in `Form.error` for the caller to raise once it has
looked at the fields.
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import invalid
from app.core.http_protocol import BodyInto
from app.services.storage import DIRECT_BLOCK
from app.services.upload_blocks import Blocks, Lane, Lanes

BLOCK = DIRECT_BLOCK  # storage writes a full block of the file as it is
MAX_FIELD = 64 << 10
MAX_PARTS = 1000  # Starlette's own caps on a form (max_fields, max_files): more is an attack, not a form
MAX_HEADER = 8 << 10  # bytes in one part header (name or value)


def _bad_body(message: str) -> Exception:
    return invalid(f"The request body could not be parsed: {message}", param=None, code="invalid_body")


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # None: no part named `file_field` with a filename came
    file_bytes: int = 0
    error: BaseException | None = None


class _Parts:
    """python-multipart callbacks: headers per part, small fields kept, the file part's bytes
    copied into blocks."""

    def __init__(self, form: Form, file_field: str, on_file_start: Callable[[Form], None], block: int) -> None:
        self.form, self.file_field, self.on_file_start = form, file_field, on_file_start
        self.header_name = self.header_value = b""
        self.disposition = b""
        self.name: str | None = None
        self.value = bytearray()
        self.in_file = False
        self.blocks = Blocks(block)
        self.data_to: tuple[bytes, int] | None = None  # where the last data the parser reported ends
        self.parts = 0
        self.ended = False  # the closing boundary came: a body cut short never sets it

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _bad_body(f"more than {MAX_PARTS} parts in the form.")
        self.disposition, self.name, self.in_file = b"", None, False
        self.value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]
        if len(self.header_name) > MAX_HEADER:
            raise _bad_body(f"a part header is longer than {MAX_HEADER} bytes.")

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]
        if len(self.header_value) > MAX_HEADER:
            raise _bad_body(f"a part header is longer than {MAX_HEADER} bytes.")

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise invalid('Invalid multipart body: a part has no Content-Disposition "name".', param="file")
        self.name = options[b"name"].decode("utf-8", "replace")
        if self.name == self.file_field and b"filename" in options:
            if self.form.filename is not None:
                raise invalid(f"Send one '{self.file_field}' part.", param=self.file_field)
            self.form.filename = options[b"filename"].decode("utf-8", "replace")
            self.in_file = True
            if self.form.error is None:
                try:
                    self.on_file_start(self.form)
                except Exception as exc:  # noqa: BLE001 - reported once the body is read
                    self.form.error = exc

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.data_to = data, end
        if self.in_file:
            self.form.file_bytes += end - start
            if self.form.error is None:
                self.blocks.add(data, start, end)
        elif self.name is not None:
            if len(self.value) + end - start > MAX_FIELD:
                raise invalid(f"Form field '{self.name}' is longer than {MAX_FIELD} bytes.", param=self.name)
            self.value += data[start:end]

    def reported_all(self, chunk: bytes) -> bool:
        """After the parser took `chunk`: whether it is in the file part's data and reported that
        data to the chunk's last byte (so it holds back no bytes that might begin a delimiter)."""
        return self.in_file and self.data_to is not None and self.data_to[0] is chunk and self.data_to[1] == len(chunk)

    def on_part_end(self) -> None:
        if not self.in_file and self.name is not None:
            self.form.fields.setdefault(self.name, self.value.decode("utf-8", "replace"))
        self.in_file = False


class _FileInto:
    """The file's data read straight into its blocks (a BodyInto target), while the parser is in
    it holding nothing back. A read's bytes are all data up to the first delimiter ("\r\n--" and
    the boundary, RFC 2046), or up to a CR in its last bytes, which may begin one cut by the
    read's end: those bytes, from there on, are given back for the parser."""

    def __init__(self, parts: _Parts, into: BodyInto, boundary: bytes) -> None:
        self.parts, self.into = parts, into
        self.delimiter = b"\r\n--" + boundary
        self.woken = asyncio.Event()
        self.reading = False

    def buffer(self) -> memoryview:
        return self.parts.blocks.space()

    def data_end(self, buffer: mmap.mmap, start: int, end: int) -> int:
        delimiter = self.delimiter
        at = buffer.find(b"\r", start, end)  # a memchr: most files have no CR at all
        if at < 0 or buffer[at:at + len(delimiter)] == delimiter:
            return end if at < 0 else at
        at = buffer.find(delimiter, at + 1, end)  # a CR of the data (CRLF lines): a slower search
        if at < 0:
            at = buffer.find(b"\r", max(start, end - len(delimiter) + 1), end)
        return end if at < 0 else at

    def landed(self, n: int) -> bytes:
        rest = self.parts.blocks.landed(n, self.data_end)
        self.parts.form.file_bytes += n - len(rest)
        if self.parts.blocks.has_full():  # hand it on before reading on: memory stays at a few blocks
            self.into.pause()
            self.woken.set()
        return rest

    def ended(self) -> None:
        self.reading = False
        self.woken.set()

    async def read(self, lanes: Lanes) -> None:
        """Read into the blocks until that ends, handing on each block that fills (nothing, if the
        server cannot start it now). Call it right after a chunk is received: while the app waits,
        more bytes arrive, and they are received as chunks first."""
        if not self.into.start(self):
            return
        self.reading = True
        try:
            while True:
                await lanes.hand_on_full()
                if not self.reading:
                    break
                self.into.resume()
                await self.woken.wait()
                self.woken.clear()
        finally:
            self.into.stop(self)


async def read_form(content_type: str, body: AsyncIterator[bytes], file_field: str, lanes: Sequence[Lane],
                    on_file_start: Callable[[Form], None] = lambda form: None, block: int | None = None,
                    into: BodyInto | None = None) -> Form:
    """Parse the body; the bytes of part `file_field` go to each of `lanes` (upload_blocks.Lanes:
    in order, each lane in a thread): `block` bytes at a time in a page-aligned `mmap`, reused once
    every lane is done with it (keep none of it), the last, shorter block as bytes.
    `on_file_start(form)` runs when that part begins, with the fields sent before it: raise there
    to skip the file's processing (the error comes back in `Form.error`). `into`: the request's
    BodyInto, if its server offers one."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise invalid("Send the file as multipart/form-data (fields 'file' and 'purpose').", param=file_field)
    form = Form()
    parts = _Parts(form, file_field, on_file_start, block or BLOCK)
    blocks = parts.blocks
    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": parts.on_part_begin, "on_part_data": parts.on_part_data, "on_part_end": parts.on_part_end,
        "on_header_field": parts.on_header_field, "on_header_value": parts.on_header_value,
        "on_header_end": parts.on_header_end, "on_headers_finished": parts.on_headers_finished,
        "on_end": parts.on_end})

    def report(exc: BaseException) -> None:
        form.error = form.error or exc

    workers = Lanes(lanes, blocks, report)
    direct = _FileInto(parts, into, options[b"boundary"]) if into is not None else None
    done = False
    try:
        # A chunk without a CR, while the parser is in the file's data holding nothing back, is all
        # data: each delimiter ("\r\n--" and the boundary) starts with the only CR it has (RFC 2046).
        # Parsed, it would be reported whole and leave the parser as it was; so it is taken as data
        # without parsing, since python-multipart's search for the delimiter (a two-way search)
        # costs several times the memchr of `in`.
        in_data = False
        async for chunk in body:
            if in_data and b"\r" not in chunk:
                parts.on_part_data(chunk, 0, len(chunk))
            else:
                parts.data_to = None
                try:
                    parser.write(chunk)
                except FormParserError:
                    raise _bad_body("it is not valid multipart/form-data.") from None
                in_data = parts.reported_all(chunk)
            if in_data and direct is not None and form.error is None:
                await direct.read(workers)
            await workers.hand_on_full()
        parser.finalize()
        await workers.hand_on_full()
        if rest := blocks.rest():
            await workers.hand_on(rest)
        done = True
    finally:  # (a bad body or a client gone: the lanes' threads finish the block they are on first)
        await workers.close(drop=not done)
    if not parts.ended and form.error is None:  # the client stopped mid-form: not the whole file
        form.error = _bad_body("it ended before the form's closing boundary.")
    return form
