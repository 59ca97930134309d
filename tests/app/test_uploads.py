"""The Uploads API with the official SDK: a file past the single-request limit goes up in parts
(`upload_file_chunked`) and comes back byte for byte; bad input changes nothing."""

from __future__ import annotations

import hashlib
import json

import openai.types as oa
import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI

from tests.conftest import new_key
from tests.contract import assert_matches

LIMIT = 8_000  # the single-request limit, lowered for the test


def big_jsonl(n: int = 300) -> bytes:
    rows = [{"prompt": f"Say the number {i} twice:", "completion": f" {i} {i} ünïcode"} for i in range(n)]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@pytest.fixture
def sdk(settings):
    from app.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": LIMIT, "max_upload_part_bytes": 6_000})
    with TestClient(create_app(small)) as client:
        yield OpenAI(api_key=new_key(settings), base_url="http://testserver/v1", http_client=client, max_retries=0)


def test_chunked_upload_round_trips_past_the_single_request_limit(sdk, settings):
    data = big_jsonl()
    assert len(data) > 2 * LIMIT
    with pytest.raises(Exception) as too_big:
        sdk.files.create(file=("big.jsonl", data), purpose="fine-tune")
    assert getattr(too_big.value, "status_code", None) == 413

    upload = sdk.uploads.upload_file_chunked(file=data, filename="big.jsonl", bytes=len(data),
                                             mime_type="text/jsonl", purpose="fine-tune", part_size=5_000,
                                             md5=hashlib.md5(data).hexdigest())
    assert isinstance(upload, oa.Upload) and upload.status == "completed"
    assert upload.file.bytes == len(data) and upload.file.filename == "big.jsonl"
    assert sdk.files.content(upload.file.id).read() == data
    raw = sdk.uploads.with_raw_response.create(bytes=10, filename="x.jsonl", mime_type="text/jsonl",
                                               purpose="fine-tune")
    assert_matches(json.loads(raw.text), "Upload")
    # Parts are gone from storage once assembled; only the file remains.
    leftovers = [p for p in settings.storage_dir.rglob("*") if p.is_file() and "uploads" in p.parts]
    assert leftovers == []
    # The file is a training file like any other: a job accepts it.
    job = sdk.fine_tuning.jobs.create(training_file=upload.file.id, model="tiny-llama")
    assert job.training_file == upload.file.id
    sdk.fine_tuning.jobs.cancel(job.id)


def test_bad_uploads_change_nothing(sdk):
    files_before = [f.id for f in sdk.files.list()]
    bad = big_jsonl(100)[:-30] + b"\n{not json}\n"
    upload = sdk.uploads.create(bytes=len(bad), filename="bad.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    first = sdk.uploads.parts.create(upload.id, data=bad[:4000])
    assert_matches(first.model_dump(), "UploadPart")
    second = sdk.uploads.parts.create(upload.id, data=bad[4000:])
    with pytest.raises(BadRequestError) as invalid_file:
        sdk.uploads.complete(upload.id, part_ids=[first.id, second.id])
    assert invalid_file.value.body["code"] == "invalid_file_format" and "line" in invalid_file.value.body["message"]
    with pytest.raises(BadRequestError) as wrong_order:  # bytes add up, md5 does not
        sdk.uploads.complete(upload.id, part_ids=[second.id, first.id], md5=hashlib.md5(bad).hexdigest())
    assert wrong_order.value.body["param"] == "md5"
    with pytest.raises(BadRequestError) as missing:
        sdk.uploads.complete(upload.id, part_ids=[first.id])
    assert missing.value.body["code"] == "upload_size_mismatch"
    with pytest.raises(Exception) as part_too_big:
        sdk.uploads.parts.create(upload.id, data=b"x" * 7_000)
    assert getattr(part_too_big.value, "status_code", None) == 413
    assert [f.id for f in sdk.files.list()] == files_before

    cancelled = sdk.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(BadRequestError) as after_cancel:
        sdk.uploads.parts.create(upload.id, data=b"{}\n")
    assert after_cancel.value.body["code"] == "upload_not_pending"
    with pytest.raises(BadRequestError) as purpose:
        sdk.uploads.create(bytes=10, filename="x", mime_type="text/plain", purpose="assistants")
    assert purpose.value.body["param"] == "purpose"


def test_concurrent_completes_make_one_file_and_a_failed_one_leaves_the_upload_pending(settings):
    """Completion is one transaction: status, file_id and the file row are committed together, and a
    second complete of the same upload waits for the first, then finds it completed."""
    import threading

    from sqlalchemy import func, select

    from app.core.auth import Caller
    from app.core.db import session_scope
    from app.core.errors import APIError
    from app.models import File, Project, Upload
    from app.protocol.uploads import CompleteUploadRequest
    from app.services import uploads as service
    from app.services.storage import storage_for
    from tests.conftest import Api
    from tests.data import chat_jsonl

    from app.main import create_app

    with TestClient(create_app(settings)) as client:
        key = new_key(settings)
        api = Api(client, key)
        content = chat_jsonl(50)
        upload = api.post("/v1/uploads", json={"filename": "c.jsonl", "purpose": "fine-tune", "bytes": len(content),
                                               "mime_type": "text/jsonl"}).json()
        part = api.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("p", content)}).json()
        bad = b'{"messages": []}\n'
        failing = api.post("/v1/uploads", json={"filename": "b.jsonl", "purpose": "fine-tune", "bytes": len(bad),
                                                 "mime_type": "text/jsonl"}).json()
        bad_part = api.post(f"/v1/uploads/{failing['id']}/parts", files={"data": ("p", bad)}).json()
        assert api.post(f"/v1/uploads/{failing['id']}/complete", json={"part_ids": [bad_part["id"]]}).status_code == 400

    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = session.scalar(select(Upload).where(Upload.id == failing["id"]))
        assert (row.status, row.file_id) == ("pending", None)
        project = session.get(Project, row.project_pk)
        caller = Caller(project.pk, project.id, project.name)
        files_before = session.scalar(select(func.count()).select_from(File).where(File.project_pk == project.pk))
    storage, outcomes, start = storage_for(settings, "files"), [], threading.Barrier(2)

    def complete() -> None:
        start.wait()
        try:
            with session_scope(url) as session:
                done = service.complete_upload(session, storage, settings, caller, upload["id"],
                                               CompleteUploadRequest(part_ids=[part["id"]]))
                outcomes.append(("ok", done.file_id))
        except APIError as exc:
            outcomes.append((exc.code, None))

    threads = [threading.Thread(target=complete) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(o[0] for o in outcomes) == ["ok", "upload_not_pending"], outcomes
    with session_scope(url) as session:
        row = session.scalar(select(Upload).where(Upload.id == upload["id"]))
        file_id = next(f for status, f in outcomes if status == "ok")
        assert (row.status, row.file_id) == ("completed", file_id)
        assert session.scalar(select(func.count()).select_from(File).where(File.project_pk == project.pk)) \
            == files_before + 1


def test_a_part_is_refused_while_it_streams_and_leaves_nothing(settings):
    """A part is stored as it arrives: one sent without a Content-Length (chunked) is refused as soon
    as it passes a limit, and a refused part leaves no row and no bytes."""
    from app.main import create_app

    small = settings.model_copy(update={"max_upload_part_bytes": 6_000, "max_storage_bytes_per_project": 20_000})
    with TestClient(create_app(small)) as client:
        headers = {"Authorization": f"Bearer {new_key(settings)}"}

        def upload(size: int) -> str:
            return client.post("/v1/uploads", headers=headers, json={
                "filename": "p.jsonl", "purpose": "fine-tune", "bytes": size, "mime_type": "text/jsonl"}).json()["id"]

        def part(upload_id: str, data: bytes, field: str = "data", chunked: bool = True):
            body = (b"--B\r\nContent-Disposition: form-data; name=\"" + field.encode() + b"\"; filename=\"p\"\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--B--\r\n")
            content = (body[i:i + 1000] for i in range(0, len(body), 1000)) if chunked else body
            return client.post(f"/v1/uploads/{upload_id}/parts", headers={
                **headers, "Content-Type": "multipart/form-data; boundary=B"}, content=content)

        big = upload(10_000)
        too_large = part(big, b"x" * 7_000)
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "part_too_large"
        small_one = upload(100)
        past_declared = part(small_one, b"x" * 200)
        assert past_declared.status_code == 400, past_declared.text
        assert past_declared.json()["error"]["code"] == "upload_size_exceeded"
        no_data = part(big, b"{}\n", field="file")
        assert no_data.status_code == 400 and no_data.json()["error"]["param"] == "data"
        assert part(big, b"", chunked=False).json()["error"]["code"] == "empty_part"
        # The project's quota counts what is stored; a part that would pass it is refused midway.
        for _ in range(3):
            stored = part(upload(6_000), b"y" * 6_000)
            assert stored.status_code == 200, stored.text
        over_quota = part(big, b"x" * 5_000)
        assert over_quota.status_code == 413, over_quota.text
        line = b'{"prompt": "a", "completion": "b"}\n'
        accepted = part(big, line)
        assert accepted.status_code == 200 and accepted.json()["object"] == "upload.part"
    parts = [p for p in small.storage_dir.rglob("*") if p.is_file() and "uploads" in p.parts]
    assert sorted(p.stat().st_size for p in parts) == [len(line), 6_000, 6_000, 6_000]
