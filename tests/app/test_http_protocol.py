"""The API's HTTP protocol (app/core/http_protocol.py) on a real uvicorn server: request bodies
arrive whole and in order, however they are framed, request after request on one connection,
and a consumer that does not read holds at most one socket read past uvicorn's 64 KiB high-water
mark of a body. An app may have a body read straight into buffers of its own (BodyInto): it gets
the same bytes, in order, and the connection goes on as before."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from app.core.http_protocol import INTO, READ_SIZE
from tests.e2e.server import in_thread


async def _reply(send, body: bytes) -> None:  # noqa: ANN001
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
    await _reply(send, f"{digest.hexdigest()} {messages} {largest}".encode())


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


class _Target:
    """A BodyInto target: reads land in `room` bytes at a time and are kept, up to the first STOP
    byte (the bytes from it on are given back). `pause`: pause the reading after every read, for
    the app to resume it a little later."""

    STOP = b"!"

    def __init__(self, into, room: int, pause: bool) -> None:  # noqa: ANN001
        self.into, self.room, self.pause = into, bytearray(room), pause
        self.kept = bytearray()
        self.woken, self.done = asyncio.Event(), False

    def buffer(self) -> memoryview:
        return memoryview(self.room)

    def landed(self, n: int) -> bytes:
        new = bytes(self.room[:n])
        at = new.find(self.STOP)
        self.kept += new if at < 0 else new[:at]
        if self.pause:
            self.into.pause()
            self.woken.set()
        return b"" if at < 0 else new[at:]

    def ended(self) -> None:
        self.done = True
        self.woken.set()


ENDED: list[str] = []  # how each request's reading into a target ended, for the disconnect test


async def _into_digest(scope, receive, send) -> None:  # noqa: ANN001
    """Has the body read into a _Target (?pause: pausing after each read) after each message it
    receives, and answers with the body's sha256 and how many of its bytes landed in place."""
    if scope["type"] != "http":
        return
    into = scope.get("extensions", {}).get(INTO)
    if scope["query_string"] == b"early":  # before any receive: the client may still wait for its 100 Continue
        early = _Target(into, 10, False)
        started = into.start(early)
        into.stop(early)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": f"{started!s:5}".encode()})
        return
    digest, in_place, more = hashlib.sha256(), 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            ENDED.append(f"disconnect after {in_place} in place")
            return
        digest.update(message["body"])
        more = message.get("more_body", False)
        if more and into is not None:
            target = _Target(into, 64 << 10, pause=scope["query_string"] == b"pause")
            assert into.start(target)  # right after a receive, no body bytes wait
            assert not into.start(_Target(into, 10, False))  # one target at a time
            while not target.done:
                await target.woken.wait()
                target.woken.clear()
                if not target.done:
                    await asyncio.sleep(0.001)
                    into.resume()
            digest.update(target.kept)
            in_place += len(target.kept)
    await _reply(send, f"{digest.hexdigest()} {in_place}".encode())


@pytest.fixture(scope="module")
def into_base() -> Iterator[str]:
    with in_thread(_into_digest) as url:
        yield url


def _no_stop(size: int) -> bytes:
    return os.urandom(size).replace(_Target.STOP, b"?")


def test_a_body_read_into_the_apps_buffers_arrives_whole_and_in_place(into_base) -> None:
    body = _no_stop(12 << 20)
    digest, in_place = httpx.post(f"{into_base}/", content=body, timeout=30).text.split()
    assert digest == hashlib.sha256(body).hexdigest()
    assert int(in_place) > len(body) // 2  # after the first message, all of it: no copy


def test_bytes_given_back_and_the_rest_of_the_body_come_to_receive_in_order(into_base) -> None:
    for stops in (1, 5, 200):
        body = bytearray(_no_stop(6 << 20))
        for at in random.Random(stops).sample(range(len(body)), stops):
            body[at:at + 1] = _Target.STOP
        digest, in_place = httpx.post(f"{into_base}/", content=bytes(body), timeout=30).text.split()
        assert digest == hashlib.sha256(body).hexdigest(), stops
        assert 0 < int(in_place) < len(body)


def test_a_target_that_pauses_the_reading_gets_the_whole_body(into_base) -> None:
    body = _no_stop(4 << 20)
    digest, in_place = httpx.post(f"{into_base}/?pause", content=body, timeout=60).text.split()
    assert digest == hashlib.sha256(body).hexdigest() and int(in_place) > 0


def test_requests_on_one_connection_and_one_pipelined_behind_a_body_read_in_place(into_base) -> None:
    with httpx.Client(timeout=30) as client:
        for size in (10, 3 << 20, 0, 2 << 20):
            body = _no_stop(size)
            assert client.post(f"{into_base}/", content=body).text.split()[0] == hashlib.sha256(body).hexdigest()
    host, port = into_base.removeprefix("http://").split(":")
    first, second = _no_stop(3 << 20), _no_stop(1000)
    request = [f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b for b in (first, second)]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request[0][:5000])
        time.sleep(0.2)  # the headers and a first piece of body received: the rest is read in place
        sock.sendall(request[0][5000:] + request[1])
        answers = sock.makefile("rb")
        digests = []
        for _ in range(2):
            assert answers.readline().startswith(b"HTTP/1.1 200")
            headers = dict(line.rstrip(b"\r\n").split(b": ", 1) for line in iter(answers.readline, b"\r\n"))
            digests.append(answers.read(int(headers[b"content-length"])).split()[0].decode())
    assert digests == [hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()]


def test_a_client_gone_while_its_body_is_read_in_place_ends_the_reading(into_base) -> None:
    host, port = into_base.removeprefix("http://").split(":")
    ENDED.clear()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + _no_stop(5000))
        time.sleep(0.2)
        sock.sendall(_no_stop(300_000))
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while not ENDED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ENDED and ENDED[0].startswith("disconnect") and ENDED[0] != "disconnect after 0 in place"
    # and the server goes on serving
    body = _no_stop(100)
    assert httpx.post(f"{into_base}/", content=body, timeout=30).text.split()[0] == hashlib.sha256(body).hexdigest()


def test_reading_in_place_does_not_start_while_the_client_waits_for_100_continue(into_base) -> None:
    host, port = into_base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /?early HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"False"), answer
