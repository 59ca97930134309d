"""/v1/files on Postgres: upload with validation, list, retrieve, content, delete."""

from __future__ import annotations

import openai.types
import pytest

from tests.contract import assert_matches
from tests.data import chat_jsonl, completion_jsonl


def stored_files(settings) -> list:
    return sorted(p.name for p in settings.storage_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("content", [chat_jsonl(), completion_jsonl()], ids=["chat", "completion"])
def test_upload_then_read_back(api, content):
    response = api.upload(content, filename="my data.jsonl")
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, "OpenAIFile")
    openai.types.FileObject.model_validate(body)
    assert body["bytes"] == len(content) and body["filename"] == "my data.jsonl"
    assert body["purpose"] == "fine-tune" and body["id"].startswith("file-")
    assert response.headers["x-request-id"]

    assert api.get(f"/v1/files/{body['id']}").json() == body
    content_response = api.get(f"/v1/files/{body['id']}/content")
    assert content_response.status_code == 200 and content_response.content == content
    listing = api.get("/v1/files").json()
    assert_matches(listing, "ListFilesResponse")
    assert [f["id"] for f in listing["data"]] == [body["id"]]


def test_list_is_newest_first_and_paginates(api):
    ids = [api.upload(chat_jsonl()).json()["id"] for _ in range(3)]
    page = api.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = api.get("/v1/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (chat_jsonl(3) + b'{"messages": [{"role": "user", "content": "hi"}\n', "line 4: invalid JSON"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "line 1: messages[0].role must be one of"),
        (b'{"messages": [{"role": "user", "content": "only a question"}]}\n', "no assistant message"),
        (b'{"prompt": "a", "completion": 3}\n', "line 1: 'completion' must be a string"),
        (chat_jsonl(2) + completion_jsonl(1), "line 3: completion format, but the file started in chat format"),
        (b"[1, 2]\n", "line 1: expected a JSON object"),
        (b"\n\n", "the file has no examples"),
        (b"", "the file has no examples"),
        (b'{"prompt": "caf\xe9", "completion": "x"}\n', "line 1: not valid UTF-8"),
    ],
    ids=["truncated-json", "bad-role", "no-assistant", "wrong-type", "mixed-formats", "not-object", "blank",
         "empty", "latin1"],
)
def test_malformed_upload_is_rejected_and_leaves_nothing(api, settings, content, expected):
    before = (api.get("/v1/files").json()["data"], stored_files(settings))
    response = api.upload(content)
    assert response.status_code == 400
    body = response.json()
    assert_matches(body, "ErrorResponse")
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "file"
    assert expected in body["error"]["message"]
    assert (api.get("/v1/files").json()["data"], stored_files(settings)) == before


def test_wrong_purpose_is_rejected(api, settings):
    response = api.upload(chat_jsonl(), purpose="assistants")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"
    assert api.get("/v1/files").json()["data"] == [] and stored_files(settings) == []


def test_missing_purpose_names_the_field(api):
    response = api.post("/v1/files", files={"file": ("a.jsonl", chat_jsonl())})
    assert response.status_code == 400
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == "purpose"


def test_delete_removes_row_and_bytes(api, settings):
    file_id = api.upload(chat_jsonl()).json()["id"]
    response = api.delete(f"/v1/files/{file_id}")
    assert response.status_code == 200
    assert_matches(response.json(), "DeleteFileResponse")
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert api.get(f"/v1/files/{file_id}").status_code == 404
    assert stored_files(settings) == []


def test_another_projects_file_is_invisible(api, other_api):
    file_id = api.upload(chat_jsonl()).json()["id"]
    for response in (other_api.get(f"/v1/files/{file_id}"), other_api.get(f"/v1/files/{file_id}/content"),
                     other_api.delete(f"/v1/files/{file_id}")):
        assert response.status_code == 404
        assert_matches(response.json(), "ErrorResponse")
    assert other_api.get("/v1/files").json()["data"] == []
    assert api.get(f"/v1/files/{file_id}").status_code == 200


def test_upload_larger_than_the_limit_is_413_and_leaves_nothing(api, settings):
    settings.max_upload_bytes = 100
    response = api.upload(chat_jsonl(20))
    assert response.status_code == 413
    assert stored_files(settings) == [] and api.get("/v1/files").json()["data"] == []


# --- issue 16: nothing half-done -----------------------------------------------------------------

def test_content_whose_bytes_are_gone_is_404_before_any_byte(api, client, settings):
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import File

    file_id = api.upload(chat_jsonl()).json()["id"]
    with session_scope(settings.resolved_database_url) as session:
        key = session.scalar(select(File.storage_key).where(File.id == file_id))
    client.app.state.storage.path(key).unlink()
    response = api.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_content_missing"
    assert key not in response.text and str(settings.resolved_data_dir) not in response.text
    assert api.get(f"/v1/files/{file_id}").status_code == 200  # the file itself is still listed


def test_delete_commits_the_row_before_it_touches_the_bytes(api, client, settings):
    """Bytes that cannot be removed do not undo a delete: the row is committed first, so the file is
    gone for the client, and never a row left pointing at removed bytes."""
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import File

    file_id = api.upload(chat_jsonl()).json()["id"]
    with session_scope(settings.resolved_database_url) as session:
        key = session.scalar(select(File.storage_key).where(File.id == file_id))
    stored = client.app.state.storage.path(key)
    stored.unlink()
    stored.mkdir()  # unlink() of the bytes now fails
    (stored / "keep").write_text("x")
    response = api.delete(f"/v1/files/{file_id}")
    assert response.status_code == 200 and response.json()["deleted"] is True
    assert api.get(f"/v1/files/{file_id}").status_code == 404
    with session_scope(settings.resolved_database_url) as session:
        assert session.scalar(select(File).where(File.id == file_id)) is None
