"""POST /v1/files reads its multipart body as it arrives (app/services/multipart_stream.py): the
file reaches storage and the line check in blocks, whatever the network chunks, and a bad line
far into the file is still named by its number with nothing left behind."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from app.core.errors import APIError
from app.services import multipart_stream
from app.services.multipart_stream import read_form
from app.services.upload_blocks import AHEAD
from tests.data import chat_jsonl, completion_jsonl

BOUNDARY = b"b0undary"


def body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + BOUNDARY + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


def read(raw: bytes | list[bytes], consume, chunk: int = 7, block: int = 50, lanes=None):
    """`raw` cut into chunks of `chunk` bytes, or given as its chunks."""
    async def chunks():
        for piece in raw if isinstance(raw, list) else (raw[i:i + chunk] for i in range(0, len(raw), chunk)):
            yield piece

    return asyncio.run(read_form(f"multipart/form-data; boundary={BOUNDARY.decode()}", chunks(), "file",
                                 lanes or [consume], block=block))


def test_the_file_arrives_in_blocks_in_order_and_the_fields_beside_it():
    content = chat_jsonl(40)
    blocks: list[bytes] = []
    form = read(body([("purpose", None, b"fine-tune"), ("file", "my data.jsonl", content), ("extra", None, b"x")]),
                lambda block: blocks.append(bytes(block)))  # (a block's buffer is reused once consumed)
    assert b"".join(blocks) == content and len(blocks) > 10
    assert {len(b) for b in blocks[:-1]} == {50} and 0 < len(blocks[-1]) <= 50
    assert form.fields == {"purpose": "fine-tune", "extra": "x"} and form.filename == "my data.jsonl"
    assert form.file_bytes == len(content) and form.error is None


def test_the_file_comes_through_whole_whatever_the_chunks_and_its_bytes_like_a_delimiter():
    """Chunks of the file's data without a CR skip the multipart parser (multipart_stream.read_form):
    whatever the cuts, and whatever the file holds that looks like part of a delimiter, the file
    and the fields come out as sent."""
    rng = random.Random(7)
    pieces = [b"\r", b"\n", b"\r\n", b"\r\n-", b"\r\n--", b"--" + BOUNDARY, b"\r\n--" + BOUNDARY[:-1], b"-"]
    for trial in range(400):
        content = b"".join(rng.choice(pieces) if rng.random() < 0.3 else b"x" * rng.choice([1, 7, 90, 3000])
                           for _ in range(rng.randint(1, 40)))
        if b"\r\n--" + BOUNDARY in content:  # a delimiter itself: no file can hold one
            continue
        raw = body([("purpose", None, b"fine-tune"), ("file", "a.jsonl", content), ("after", None, b"y\r\n--z")])
        if trial % 4 == 0:  # transport padding after a delimiter (RFC 2046), longer than a chunk
            at = raw.index(b'filename="a.jsonl"\r\n\r\n') + 22 + len(content) + 4 + len(BOUNDARY)
            raw = raw[:at] + b" \t" * rng.randint(1, 900) + raw[at:]
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(0, 12))))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        blocks: list[bytes] = []
        form = read(chunks, lambda block: blocks.append(bytes(block)), block=rng.choice([50, 4096]))
        assert form.error is None and b"".join(blocks) == content, (trial, chunks)
        assert form.fields == {"purpose": "fine-tune", "after": "y\r\n--z"} and form.file_bytes == len(content)


def test_a_large_file_goes_through_a_few_buffers():
    """Memory stays at a few blocks whatever the file's size: AHEAD handed on, one full waiting for
    room and one filling (for chunks no larger than a block, as the network gives them). A block's
    buffer is reused once consumed, and full blocks are handed on as they fill, chunk after chunk."""
    content = chat_jsonl(300)
    buffers, blocks = set(), []

    def consume(block) -> None:
        buffers.add(id(block))
        blocks.append(bytes(block))

    form = read(body([("purpose", None, b"fine-tune"), ("file", "a.jsonl", content)]), consume, chunk=40)
    assert form.error is None and b"".join(blocks) == content and len(blocks) > 100
    assert len(buffers) <= AHEAD + 2 + 1  # (and the last, shorter block, as bytes)


def test_a_failing_block_stops_the_handing_on_but_the_body_is_read_to_the_end():
    calls = []

    def consume(block: bytes) -> None:
        calls.append(block)
        if len(calls) == 2:
            raise APIError(400, "bad line", param="file")

    form = read(body([("file", "a.jsonl", chat_jsonl(40)), ("purpose", None, b"fine-tune")]), consume)
    assert len(calls) == 2 and isinstance(form.error, APIError)
    assert form.fields == {"purpose": "fine-tune"}  # the part after the file was still read


def test_every_lane_gets_every_block_in_order_and_one_lanes_error_stops_the_others():
    content = chat_jsonl(60)
    raw = body([("purpose", None, b"fine-tune"), ("file", "a.jsonl", content)])
    first, second = [], []
    form = read(raw, None, lanes=[lambda block: first.append(bytes(block)), lambda block: second.append(bytes(block))])
    assert form.error is None and b"".join(first) == content and first == second

    checked, stored = [], []

    def check(block) -> None:
        checked.append(bytes(block))
        if len(checked) == 3:
            raise APIError(400, "bad line", param="file")

    def store(block) -> None:
        time.sleep(0.001)  # the slower lane: the check runs ahead of it and fails first
        stored.append(bytes(block))

    form = read(raw, None, lanes=[check, store])
    assert isinstance(form.error, APIError) and form.error.message == "bad line"
    assert len(checked) == 3 and len(stored) < len(first)  # the blocks after the error were dropped
    assert stored == first[:len(stored)]


def test_not_multipart_is_a_400_naming_the_file():
    with pytest.raises(APIError) as exc:
        asyncio.run(read_form("application/json", None, "file", [lambda b: None]))
    assert exc.value.status_code == 400 and exc.value.param == "file"


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(multipart_stream, "BLOCK", 256)


def stored_files(settings) -> list:
    return sorted(p.name for p in settings.storage_dir.rglob("*") if p.is_file())


def test_a_bad_line_many_blocks_in_is_named_and_leaves_nothing(api, settings, small_blocks):
    content = chat_jsonl(200) + b'{"messages": [{"role": "robot", "content": "x"}]}\n' + chat_jsonl(5)
    response = api.upload(content)
    assert response.status_code == 400, response.text
    assert "line 201: messages[0].role must be one of" in response.json()["error"]["message"]
    assert stored_files(settings) == [] and api.get("/v1/files").json()["data"] == []


def test_a_file_of_many_blocks_is_stored_whole(api, small_blocks):
    content = completion_jsonl(300)
    response = api.upload(content, filename="c.jsonl")
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(content)
    assert api.get(f"/v1/files/{response.json()['id']}/content").content == content


def test_purpose_after_the_file_is_still_checked(api, settings):
    raw = body([("file", "a.jsonl", chat_jsonl()), ("purpose", None, b"assistants")])
    response = api.client.post("/v1/files", content=raw,
                        headers={**api.headers, "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    assert stored_files(settings) == []


def test_missing_file_names_the_field(api):
    response = api.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("a.jsonl", b"x")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_a_body_cut_short_stores_nothing(api, settings):
    """A client that stops mid-file (no closing boundary) has not sent the whole file, even when
    what came ends on a line boundary and validates: 400, nothing stored."""
    whole = body([("purpose", None, b"fine-tune"), ("file", "a.jsonl", chat_jsonl(20))])
    cut = whole[: whole.index(b"\r\n--" + BOUNDARY + b"--")]  # the file's lines, without the closing boundary
    assert cut.endswith(b"\n")
    response = api.client.post("/v1/files", content=cut,
                               headers={**api.headers, "content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_body"
    assert stored_files(settings) == [] and api.get("/v1/files").json()["data"] == []
