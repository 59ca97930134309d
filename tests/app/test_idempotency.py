"""`Idempotency-Key` on job create and file upload: a retried POST returns the same object."""

from __future__ import annotations

from tests.conftest import TINY
from tests.contract import assert_matches
from tests.data import chat_jsonl


def test_job_create_with_the_same_key_returns_the_same_job(api):
    file_id = api.upload(chat_jsonl()).json()["id"]
    body = {"model": TINY, "training_file": file_id, "suffix": "idem"}
    first = api.client.post("/v1/fine_tuning/jobs", json=body, headers={**api.headers, "Idempotency-Key": "k-1"})
    again = api.client.post("/v1/fine_tuning/jobs", json=body, headers={**api.headers, "Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    jobs = [j["id"] for j in api.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]]
    assert jobs.count(first.json()["id"]) == 1 and len(jobs) == 1

    # Same key, different body: refused, nothing created.
    other = api.client.post("/v1/fine_tuning/jobs", json={**body, "suffix": "other"},
                            headers={**api.headers, "Idempotency-Key": "k-1"})
    assert other.status_code == 400
    assert_matches(other.json(), "ErrorResponse")
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["param"] == "Idempotency-Key"
    # A new key is a new job.
    new = api.client.post("/v1/fine_tuning/jobs", json=body, headers={**api.headers, "Idempotency-Key": "k-2"})
    assert new.status_code == 200 and new.json()["id"] != first.json()["id"]
    assert len(api.get("/v1/fine_tuning/jobs").json()["data"]) == 2


def test_keys_belong_to_one_project(api, other_api):
    body = {"model": TINY, "training_file": api.upload(chat_jsonl()).json()["id"]}
    mine = api.client.post("/v1/fine_tuning/jobs", json=body, headers={**api.headers, "Idempotency-Key": "shared"})
    theirs_body = {"model": TINY, "training_file": other_api.upload(chat_jsonl()).json()["id"]}
    theirs = other_api.client.post("/v1/fine_tuning/jobs", json=theirs_body,
                                   headers={**other_api.headers, "Idempotency-Key": "shared"})
    assert mine.status_code == theirs.status_code == 200 and mine.json()["id"] != theirs.json()["id"]


def test_upload_with_the_same_key_stores_one_file(api):
    def upload(content: bytes, key: str):
        return api.client.post("/v1/files", files={"file": ("train.jsonl", content)}, data={"purpose": "fine-tune"},
                               headers={**api.headers, "Idempotency-Key": key})

    first, again = upload(chat_jsonl(), "u-1"), upload(chat_jsonl(), "u-1")
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert [f["id"] for f in api.get("/v1/files").json()["data"]] == [first.json()["id"]]
    changed = upload(chat_jsonl(13), "u-1")
    assert changed.status_code == 400 and changed.json()["error"]["code"] == "idempotency_key_reused"
    assert len(api.get("/v1/files").json()["data"]) == 1
    too_long = upload(chat_jsonl(), "x" * 256)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "Idempotency-Key"
    assert len(api.get("/v1/files").json()["data"]) == 1
