"""A large upload's lines are checked in a process of its own (app/services/upload_check_process.py):
the same verdict as the check in the API process, for every kind of file, whatever the blocks; the
first error is never lost nor reordered, only raised later; a dead check process fails that one
upload with a clear 500 and is replaced."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os

import pytest

from app.core.errors import APIError
from app.services import files, multipart_stream
from app.services.files import FileSink, UploadLimits
from app.services.upload_check import LineCheck, LineLimits, UploadCheckError
from app.services.upload_check_process import CheckPool, RemoteLineCheck
from app.services.storage import AtomicWriter
from tests.data import chat_jsonl, completion_jsonl, preference_jsonl
from worker.training import validation

LIMITS = LineLimits(max_line_bytes=400, max_lines=300)
BAD_ROLE = b'{"messages": [{"role": "robot", "content": "x"}]}\n'
CASES = {
    "chat": chat_jsonl(120),
    "completion, no final newline": completion_jsonl(150).rstrip(b"\n"),
    "preference": preference_jsonl(20),
    "blank and CRLF lines": chat_jsonl(30).replace(b"\n", b"\r\n", 3) + b"\n  \n" + chat_jsonl(30),
    "bad line far in": chat_jsonl(100) + BAD_ROLE + chat_jsonl(5),
    "mixed formats": chat_jsonl(50) + completion_jsonl(2),
    "invalid JSON": chat_jsonl(70) + b'{"messages": [\n' + chat_jsonl(2),
    "not UTF-8": chat_jsonl(70) + b'{"prompt": "\xff", "completion": "x"}\n',
    "a line too long": chat_jsonl(60) + json.dumps({"prompt": "p" * 500, "completion": "c"}).encode() + b"\n",
    "an unfinished line too long": chat_jsonl(60) + b"x" * 1000,
    "a bad line, then one too long": chat_jsonl(60) + BAD_ROLE + b"x" * 1000 + b"\n",
    "too many lines": completion_jsonl(301),
    "no examples": b"\n\n \n",
}


def verdict_of_blocks(check, blocks: list[bytes]):
    try:
        for block in blocks:
            check.feed(block)
        summary = check.finish()
        return summary.format, summary.n_examples
    except UploadCheckError as exc:
        return exc.code, exc.message


def verdict(check, content: bytes, block: int):
    return verdict_of_blocks(check, [content[i:i + block] for i in range(0, len(content), block)])


@pytest.fixture
def pool():
    pool = CheckPool()
    yield pool
    pool.close()


EXPECTED = {  # what the check says of each case, wherever it runs and however the file is cut
    "chat": ("chat", 120),
    "completion, no final newline": ("completion", 150),
    "preference": ("preference", 20),
    "blank and CRLF lines": ("chat", 60),
    "bad line far in": ("invalid_file_format", "line 101: messages[0].role must be one of"),
    "mixed formats": ("invalid_file_format", "line 51: completion format, but the file started in chat format"),
    "invalid JSON": ("invalid_file_format", "line 71: invalid JSON"),
    "not UTF-8": ("invalid_file_format", "line 71: not valid UTF-8"),
    "a line too long": ("line_too_long", "line 61: longer than the limit of 400 bytes"),
    "an unfinished line too long": ("line_too_long", "line 61: longer than the limit of 400 bytes"),
    "a bad line, then one too long": ("invalid_file_format", "line 61: messages[0].role must be one of"),
    "too many lines": ("too_many_lines", "more than the limit of 300 lines"),
    "no examples": ("invalid_file_format", "the file has no examples"),
}


def said(outcome) -> tuple:
    """A verdict as EXPECTED words it: the summary, or the error's code and the part of its message after the prefix."""
    code, detail = outcome
    return (code, detail) if isinstance(detail, int) else (code, detail.removeprefix("Invalid file format for fine-tuning: "))


def test_every_case_has_its_expected_verdict():
    assert EXPECTED.keys() == CASES.keys()


@pytest.mark.parametrize("scanner", ["compiled", "msgspec"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("block", [97, 4096, 1 << 20])
@pytest.mark.parametrize("children", [1, 2])
def test_the_check_processes_give_the_verdict_of_the_check_in_the_api_process(pool, name, block, children, scanner,
                                                                             monkeypatch):
    """The children check with the compiled scanner; here, with it or with msgspec alone."""
    content = CASES[name]
    with monkeypatch.context() as m:
        if scanner == "msgspec":
            m.setattr(validation, "_linescan", None)
        local = verdict(LineCheck(LIMITS), content, block)
    remote_check = RemoteLineCheck(pool.lease_some(children, children), LIMITS, pool)
    try:
        assert len(remote_check.processes) == children
        remote = verdict(remote_check, content, block)
    finally:
        remote_check.close()
    assert remote == local
    code, detail = said(local)
    assert code == EXPECTED[name][0] and (detail == EXPECTED[name][1] if isinstance(detail, int)
                                          else detail.startswith(EXPECTED[name][1])), local


@pytest.mark.parametrize("children", [0, 1, 2])
def test_a_block_that_starts_in_another_format_is_refused_at_its_first_line(pool, children):
    """Blocks are checked on their own: the file's format is its first block's, and a block that
    starts in another format is refused there, before any error of its own further on."""
    blocks = [chat_jsonl(50), completion_jsonl(3) + BAD_ROLE, chat_jsonl(2)]
    check = RemoteLineCheck(pool.lease_some(children, children), LIMITS, pool) if children else LineCheck(LIMITS)
    try:
        outcome = verdict_of_blocks(check, blocks)
    finally:
        check.close()
    assert outcome == ("invalid_file_format", "Invalid file format for fine-tuning: line 51: completion format, "
                       "but the file started in chat format")


def test_an_early_bad_line_is_raised_by_a_later_call_with_its_own_number(pool):
    check = RemoteLineCheck(pool.lease_some(2), LIMITS, pool)
    check.feed(chat_jsonl(3) + BAD_ROLE)
    with pytest.raises(UploadCheckError) as exc:
        for _ in range(50):  # later, good blocks: the first error still comes back, named by its line
            check.feed(chat_jsonl(1))
        check.finish()
    assert "line 4: messages[0].role" in exc.value.message
    check.close()


def test_the_process_serves_the_next_upload_after_one_it_refused(pool):
    first = pool.lease_some(1)
    check = RemoteLineCheck(first, LIMITS, pool)
    check.feed(BAD_ROLE)  # refused midway; the upload gives up without a finish
    check.close()
    again = pool.lease_some(1)
    assert again == first and pool.lease_some(1) == []  # the pool's one process, handed back and busy again
    assert verdict(RemoteLineCheck(again, LIMITS, pool), chat_jsonl(12), 50) == ("chat", 12)


def test_a_dead_check_process_fails_its_upload_with_a_500_and_is_replaced(pool, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "POOL", pool)
    limits = UploadLimits(max_bytes=1 << 20, max_line_bytes=400, max_lines=300)
    with AtomicWriter(tmp_path / "f.jsonl") as writer:
        sink = FileSink(writer, limits, expected_bytes=files.REMOTE_CHECK_FROM, check_processes=1)
        assert isinstance(sink.check, RemoteLineCheck)
        dead = sink.check.processes[0]
        sink.feed(chat_jsonl(5))
        dead.proc.kill()
        dead.proc.wait()
        with pytest.raises(APIError) as exc:
            for _ in range(100):
                sink.feed(chat_jsonl(5))
            sink.finish()
        sink.close()
    assert exc.value.status_code == 500 and exc.value.code == "upload_check_failed"
    replacement = pool.lease(1)
    assert replacement is not None and replacement is not dead
    pool.release(replacement, True)


def test_a_byte_limit_after_a_bad_line_still_names_the_bad_line(pool, tmp_path, monkeypatch):
    """The order of errors is the file's: a bad line that came before the byte limit was crossed
    wins, as it does when the API process checks the lines itself."""
    monkeypatch.setattr(files, "POOL", pool)
    limits = UploadLimits(max_bytes=2000, max_line_bytes=400, max_lines=300)
    content = chat_jsonl(2) + BAD_ROLE + chat_jsonl(40)
    outcomes = []
    for processes in (0, 1):
        with AtomicWriter(tmp_path / f"f{processes}.jsonl") as writer:
            sink = FileSink(writer, limits, expected_bytes=files.REMOTE_CHECK_FROM, check_processes=processes)
            with pytest.raises(APIError) as exc:
                for i in range(0, len(content), 300):
                    sink.feed(content[i:i + 300])
            sink.close()
            outcomes.append((exc.value.status_code, exc.value.code, exc.value.message))
    assert outcomes[0] == outcomes[1] and "line 3:" in outcomes[0][2]


@pytest.fixture
def checked_apart(settings, monkeypatch):
    """Every upload through the API is checked by a check process, in small blocks."""
    monkeypatch.setattr(files, "REMOTE_CHECK_FROM", 0)
    monkeypatch.setattr(multipart_stream, "BLOCK", 512)
    settings.upload_check_processes = 1


def test_an_upload_checked_apart_is_stored_or_refused_as_any_other(api, settings, checked_apart):
    good = chat_jsonl(200)
    response = api.upload(good)
    assert response.status_code == 200, response.text
    assert api.get(f"/v1/files/{response.json()['id']}/content").content == good
    bad = chat_jsonl(150) + BAD_ROLE + chat_jsonl(50)
    response = api.upload(bad)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_file_format"
    assert "line 151: messages[0].role must be one of" in response.json()["error"]["message"]
    assert len(api.get("/v1/files").json()["data"]) == 1
    assert sorted(p.name for p in settings.storage_dir.rglob("*") if p.is_file()) == [
        f"{response_id}.jsonl" for response_id in [api.get("/v1/files").json()["data"][0]["id"]]]


def test_the_check_process_stays_small(api, checked_apart):
    """It imports the validation rules only (no torch, no web framework): a few tens of MB."""
    assert api.upload(chat_jsonl(50)).status_code == 200
    process = files.POOL.lease(1)
    assert process is not None
    try:
        with open(f"/proc/{process.proc.pid}/status") as status:
            rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        assert rss_kb < 64 << 10
    finally:
        files.POOL.release(process, True)


def test_concurrent_uploads_share_the_pool_and_each_gets_its_own_verdict(pool, tmp_path, monkeypatch):
    """One upload takes at most PER_UPLOAD children; the next takes what is left; one that finds
    none is checked in the API process. Each gets its own file's verdict, whatever runs beside it."""
    monkeypatch.setattr(files, "POOL", pool)
    limits = UploadLimits(max_bytes=1 << 20, max_line_bytes=400, max_lines=300)
    contents = [chat_jsonl(200), completion_jsonl(250), chat_jsonl(90) + BAD_ROLE + chat_jsonl(5)]
    with contextlib.ExitStack() as stack:
        sinks = [FileSink(stack.enter_context(AtomicWriter(tmp_path / f"f{i}.jsonl")), limits,
                          expected_bytes=files.REMOTE_CHECK_FROM, check_processes=3) for i in range(3)]
        assert [len(s.check.processes) if isinstance(s.check, RemoteLineCheck) else 0 for s in sinks] == [2, 1, 0]

        def upload(sink, content):
            try:
                for i in range(0, len(content), 333):
                    sink.feed(content[i:i + 333])
                summary = sink.finish()
                return summary.format, summary.n_examples
            except APIError as exc:
                return exc.code, exc.message
            finally:
                sink.close()

        with concurrent.futures.ThreadPoolExecutor(3) as threads:
            outcomes = list(threads.map(upload, sinks, contents))
    assert outcomes[:2] == [("chat", 200), ("completion", 250)]
    assert outcomes[2][0] == "invalid_file_format" and "line 91: messages[0].role" in outcomes[2][1]
    back = pool.lease_some(3, 3)
    assert len(back) == 3  # all handed back, healthy
    for process in back:
        pool.release(process, True)


def test_by_default_the_processes_check_only_where_the_scanner_is_not_built(monkeypatch):
    """The compiled scanner checks in an API thread without the interpreter lock, faster than the
    processes (bench/upload.py): they are for the msgspec path, one per core beyond the first."""
    from app.core.config import Settings

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert Settings(upload_check_processes=-1).resolved_upload_check_processes == 0
    assert Settings(upload_check_processes=3).resolved_upload_check_processes == 3
    monkeypatch.setattr(validation, "COMPILED_SCANNER", False)
    assert Settings(upload_check_processes=-1).resolved_upload_check_processes == 4
