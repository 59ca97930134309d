"""The API's HTTP protocol (app/core/http_protocol.py) on a real uvicorn server: request bodies
arrive whole and in order, however they are framed, request after request on one connection,
and a consumer that does not read holds at most one socket read past uvicorn's 64 KiB high-water
mark of a body."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from app.core.http_protocol import READ_SIZE
from tests.e2e.server import in_thread


async def _echo_digest(scope, receive, send) -> None:  # noqa: ANN001
    """Answers with the body's sha256, how many messages it came in, and the largest one.
    With `?slow`, waits a while before each receive, as a slow consumer does."""
    if scope["type"] != "http":
        return
    digest, messages, largest = hashlib.sha256(), 0, 0
    while True:
        if scope["query_string"] == b"slow":
            await asyncio.sleep(0.02)
        message = await receive()
        assert message["type"] == "http.request"
        assert isinstance(message["body"], bytes)
        digest.update(message["body"])
        messages += 1
        largest = max(largest, len(message["body"]))
        if not message.get("more_body"):
            break
    body = f"{digest.hexdigest()} {messages} {largest}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with in_thread(_echo_digest) as url:
        yield url


def _answer(response: httpx.Response) -> tuple[str, int, int]:
    assert response.status_code == 200, response.text
    digest, messages, largest = response.text.split()
    return digest, int(messages), int(largest)


def test_a_large_body_arrives_whole(base) -> None:
    body = os.urandom(12 << 20)
    digest, messages, _ = _answer(httpx.post(f"{base}/", content=body, timeout=30))
    assert digest == hashlib.sha256(body).hexdigest()
    assert messages > 1  # it came in pieces, as it arrived, not once all was read


def test_a_chunked_body_arrives_whole(base) -> None:
    pieces = [os.urandom(n) for n in (1, 7, 65536, 300_000, 3, 1 << 20)]
    digest, _, _ = _answer(httpx.post(f"{base}/", content=iter(pieces), timeout=30))
    assert digest == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_requests_one_after_another_on_one_connection_keep_their_own_bodies(base) -> None:
    with httpx.Client(timeout=30) as client:
        for size in (0, 10, 3 << 20, 5, 2 << 20):
            body = os.urandom(size)
            digest, _, _ = _answer(client.post(f"{base}/", content=body))
            assert digest == hashlib.sha256(body).hexdigest(), size


def test_a_request_sent_right_behind_a_long_body_in_the_same_packet_is_answered_too(base) -> None:
    """A body of known length is taken past the parser; what follows it in the same socket read is
    the next request (pipelined), which must be parsed as one."""
    host, port = base.removeprefix("http://").split(":")
    first, second = os.urandom(700_000), os.urandom(1000)

    def request(body: bytes) -> bytes:
        return f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body

    with socket.create_connection((host, int(port)), timeout=30) as sock:
        whole = request(first)
        sock.sendall(whole[:5000])
        time.sleep(0.2)  # the headers and a first piece of body, parsed
        sock.sendall(whole[5000:] + request(second))
        answers = sock.makefile("rb")
        bodies = []
        for _ in range(2):
            assert answers.readline().startswith(b"HTTP/1.1 200")
            headers = dict(line.rstrip(b"\r\n").split(b": ", 1) for line in iter(answers.readline, b"\r\n"))
            bodies.append(answers.read(int(headers[b"content-length"])).split()[0].decode())
    assert bodies == [hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()]


def test_a_slow_consumer_holds_about_the_high_water_mark_of_a_body(base) -> None:
    body = os.urandom(24 << 20)
    digest, _, largest = _answer(httpx.post(f"{base}/?slow", content=body, timeout=60))
    assert digest == hashlib.sha256(body).hexdigest()
    # Reading stops once more than 64 KiB wait; the socket read that crossed it (<= READ_SIZE) is
    # kept whole. Without the pause, 20 ms waits would let several MB pile up.
    assert largest <= HIGH_WATER_LIMIT + READ_SIZE
