"""Hostile request bodies against a real uvicorn server (issue 16): an announced length over the
limit is refused before a byte is read, a chunked body with no length is cut off at the limit,
10,000 form fields and huge part headers are refused, nothing is stored, and /healthz keeps
answering while it goes on."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlparse

import httpx

from tests.badinput.conftest import live_server
from tests.badinput.corpus import CHAT, jsonl
from tests.badinput.snapshot import snapshot
from tests.conftest import new_key

LIMIT = 1 << 20
BOUNDARY = "whetstoneboundary"


def raw_request(base: str, head: str, body_chunks=(), *, read_timeout: float = 30) -> bytes:
    """Send `head` and then `body_chunks` (stopping when the server closes), reading the answer
    all the while; return what the server sent."""
    url = urlparse(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=read_timeout)
    received = bytearray()

    def read() -> None:
        try:
            while not _complete(received) and (chunk := sock.recv(65536)):
                received.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sock.sendall(head.encode("latin-1"))
        for chunk in body_chunks:
            sock.sendall(chunk)
    except OSError:  # the server answered and closed: stop sending
        pass
    reader.join(read_timeout)
    sock.close()
    assert _complete(received), received[:300]
    return bytes(received)


def _complete(raw: bytes) -> bool:
    head, sep, body = bytes(raw).partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def multipart(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for headers, data in parts:
        out += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post_head(path: str, key: str, extra: str) -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{extra}\r\n")


def attacks(key: str):
    """(name, head, body chunks, expected status, expected error code)"""
    chunk = b"x" * 65536

    def chunked(n: int):
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n').encode()
        yield f"{len(head):x}\r\n".encode() + head + b"\r\n"
        for _ in range(n):
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    fields = multipart(*[(f'Content-Disposition: form-data; name="f{i}"', b"v") for i in range(10_000)])
    huge_header = multipart((f'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\nX-Pad: {"p" * (512 << 10)}',
                             jsonl(CHAT)), ('Content-Disposition: form-data; name="purpose"', b"fine-tune"))
    return [
        ("announced length over the limit", post_head("/v1/files", key, f"Content-Length: {100 * LIMIT}\r\n"),
         [], 413, "file_too_large"),
        ("chunked with no length, past the limit", post_head("/v1/files", key, "Transfer-Encoding: chunked\r\n"),
         chunked(4 * LIMIT // len(chunk)), 413, "file_too_large"),
        ("10,000 form fields", post_head("/v1/files", key, f"Content-Length: {len(fields)}\r\n"), [fields], 400,
         "invalid_body"),
        ("huge part headers", post_head("/v1/files", key, f"Content-Length: {len(huge_header)}\r\n"),
         [huge_header], 400, "invalid_body"),
        ("JSON body with an announced length over the limit",
         f"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
         f"Content-Type: application/json\r\nContent-Length: {LIMIT * 50}\r\n\r\n", [], 413, "request_too_large"),
    ]


def test_hostile_bodies_are_refused_fast_store_nothing_and_healthz_keeps_answering(own_settings):
    with live_server(own_settings, max_upload_bytes=LIMIT, max_request_body_bytes=LIMIT,
                     rate_limit_requests_per_minute=0) as base:
        key = new_key(own_settings)
        before = snapshot(own_settings)
        for name, head, body, status, code in attacks(key):
            started = time.monotonic()
            raw = raw_request(base, head, body)
            assert raw, name
            assert status_of(raw) == status, (name, raw[:300])
            error = json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["code"] == code, (name, error)
            print(f"{name}: {status} in {time.monotonic() - started:.2f}s ({error['message']})")
        assert snapshot(own_settings) == before

        # The same attacks, from 4 clients over and over, while /healthz is timed.
        stop = threading.Event()
        answers: list[int] = []

        def attack() -> None:
            while not stop.is_set():
                for _, head, body, _, _ in attacks(key):
                    answers.append(status_of(raw_request(base, head, body) or b"x 0 x"))

        threads = [threading.Thread(target=attack, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        latencies = []
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert client.get(f"{base}/healthz").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(30)
        latencies.sort()
        print(f"/healthz under attack: {len(latencies)} answers, median {latencies[len(latencies) // 2] * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms; {len(answers)} hostile requests answered {sorted(set(answers))}")
        assert latencies[-1] < 5, latencies  # a sanity bound, not a benchmark
        assert answers and set(answers) <= {400, 413}
        assert snapshot(own_settings) == before
