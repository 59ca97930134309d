"""POST /v1/files on a real server (the protocol `whetstone serve` runs), where the file's data is
read off the socket straight into its blocks up to each CR (multipart_stream._FileInto): the
stored file is the one sent, whatever its line endings and wherever its CRs fall against the
socket reads and the blocks; a bad line is still named with nothing stored, and a client gone
midway leaves nothing behind."""

from __future__ import annotations

import mmap
import random
import socket
import time

import httpx
import pytest

from app.services import multipart_stream
from tests.app.test_upload_stream import stored_files
from tests.data import chat_jsonl, completion_jsonl
from tests.e2e.server import in_thread

BLOCK = 64 << 10


@pytest.fixture
def server(settings, monkeypatch):
    """The app on a real server, with 64 KiB blocks, counting the bytes that land in place."""
    from app.main import create_app

    monkeypatch.setattr(multipart_stream, "BLOCK", BLOCK)
    counted = {"in place": 0}
    landed = multipart_stream._FileInto.landed

    def counting(self, n: int) -> bytes:
        rest = landed(self, n)
        counted["in place"] += n - len(rest)
        return rest

    monkeypatch.setattr(multipart_stream._FileInto, "landed", counting)
    with in_thread(create_app(settings)) as base:
        yield base, counted


def key(api) -> str:  # noqa: ANN001
    return api.headers["Authorization"].removeprefix("Bearer ")


def _upload(base: str, key: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{base}/v1/files", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", content)})


def _content(base: str, key: str, file_id: str) -> bytes:
    return httpx.get(f"{base}/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {key}"}, timeout=60).content


def test_files_of_any_line_endings_are_stored_as_sent_and_mostly_read_in_place(server, api):
    base, counted = server
    lf = completion_jsonl(30_000)  # about 2 MB: many blocks
    lines = lf.splitlines(keepends=True)
    files = {
        "LF": lf,
        "CRLF": lf.replace(b"\n", b"\r\n"),
        "CRLF every 1000th line": b"".join(line.replace(b"\n", b"\r\n") if i % 1000 == 0 else line
                                           for i, line in enumerate(lines)),
        "CRLF on the last line only": b"".join(lines[:-1]) + lines[-1].replace(b"\n", b"\r\n"),
        f"a CR at each block boundary ({BLOCK} bytes)": b"".join(
            line.replace(b"\n", b"\r\n") if (sum(map(len, lines[:i])) // BLOCK) != (sum(map(len, lines[:i + 1])) // BLOCK)
            else line for i, line in enumerate(lines[:3000])),
        "one line": chat_jsonl(1),
    }
    for name, content in files.items():
        counted["in place"] = 0
        response = _upload(base, key(api), content)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["bytes"] == len(content), name
        assert _content(base, key(api), response.json()["id"]) == content, name
        if name in ("LF", "CRLF every 1000th line"):  # (CRLF on short lines: many reads end in "\r")
            assert counted["in place"] > len(content) // 2, (name, counted)


def test_a_read_is_kept_up_to_the_first_bytes_that_may_begin_a_delimiter():
    """_FileInto.data_end on random reads full of near-delimiters: no delimiter, whole or cut by
    the read's end, begins in the bytes it keeps, and what it gives back starts with a CR."""
    boundary = b"b0undary"
    delimiter = b"\r\n--" + boundary
    pieces = [b"x", b"\n", b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"-", *(delimiter[:k] for k in range(1, len(delimiter) + 1))]
    cut = multipart_stream._FileInto(None, None, boundary).data_end  # (uses only the boundary)
    rng = random.Random(0)
    buffer = mmap.mmap(-1, 1 << 12)
    given_back = 0
    for _ in range(3000):
        data = b"".join(rng.choices(pieces, k=rng.randint(1, 40)))[:1000]
        start = rng.randint(0, 100)
        buffer[start:start + len(data)] = data
        end = start + len(data)
        at = cut(buffer, start, end)
        assert start <= at <= end
        for i in range(start, at):
            assert not delimiter.startswith(buffer[i:min(end, i + len(delimiter))]), (data, at)
        if at < end:
            assert buffer[at:at + 1] == b"\r"
            given_back += 1
    assert given_back > 100  # (the reads had delimiters to find)


def test_a_bad_line_far_into_a_file_read_in_place_is_named_and_nothing_is_stored(server, api, settings):
    base, counted = server
    content = completion_jsonl(20_000) + b'{"prompt": 1}\n' + completion_jsonl(10)
    response = _upload(base, key(api), content)
    assert response.status_code == 400, response.text
    assert "line 20001" in response.json()["error"]["message"]
    assert counted["in place"] > 0
    assert stored_files(settings) == [] and api.get("/v1/files").json()["data"] == []


def test_a_client_gone_midway_through_a_file_read_in_place_leaves_nothing(server, api, settings):
    base, counted = server
    host, port = base.removeprefix("http://").split(":")
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n").encode()
    content = completion_jsonl(20_000)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key(api)}\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                     f"Content-Length: {len(head) + 2 * len(content)}\r\n\r\n".encode() + head + content[:1000])
        time.sleep(0.3)
        sock.sendall(content[1000:])  # half the body, then gone
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while stored_files(settings) and time.monotonic() < deadline:  # (the .partial file goes once the route ends)
        time.sleep(0.05)
    assert counted["in place"] > 0
    assert stored_files(settings) == [] and api.get("/v1/files").json()["data"] == []
    response = _upload(base, key(api), content)  # and the server goes on
    assert response.status_code == 200 and _content(base, key(api), response.json()["id"]) == content
