"""Quotas and limits from Settings (issue 16): requests per minute per key, storage bytes and
waiting jobs per project, upload line limits; filenames are labels, never paths."""

from __future__ import annotations

import time

import pytest

from tests.badinput.conftest import api_for, app_client
from tests.badinput.corpus import CHAT, TINY, jsonl
from tests.badinput.snapshot import snapshot


def _start_of_a_fresh_minute_window() -> None:
    """The limit counts per calendar minute: keep a test's requests inside one window."""
    if time.time() % 60 > 50:
        time.sleep(60 - time.time() % 60 + 0.1)


@pytest.mark.parametrize("counter", ["redis", "in-process"])
def test_requests_beyond_the_per_minute_limit_get_429_with_openai_headers(own_settings, counter):
    settings = own_settings if counter == "redis" else own_settings.model_copy(update={"broker_url": ""})
    with app_client(settings, rate_limit_requests_per_minute=3) as (client, s):
        api, other = api_for(client, s), api_for(client, s)
        _start_of_a_fresh_minute_window()
        remaining = []
        for _ in range(3):
            response = api.get("/v1/files")
            assert response.status_code == 200, response.text
            assert response.headers["x-ratelimit-limit-requests"] == "3"
            assert response.headers["x-ratelimit-reset-requests"].endswith("s")
            remaining.append(response.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        refused = api.get("/v1/files")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-request-id"]
        # A second Authorization header cannot pick a fresh count: the key that authenticates is counted.
        doubled = client.get("/v1/files", headers=[("authorization", api.headers["Authorization"]),
                                                   ("authorization", "Bearer sk-whet-made-up-fresh-count")])
        assert doubled.status_code == 429, doubled.text
        # Another key has its own budget.
        assert other.get("/v1/files").status_code == 200


def test_the_redis_count_is_shared_by_every_api_process(own_settings):
    with app_client(own_settings, rate_limit_requests_per_minute=2) as (first, s):
        with app_client(own_settings, rate_limit_requests_per_minute=2) as (second, _):
            _start_of_a_fresh_minute_window()
            key = api_for(first, s).headers
            assert first.get("/v1/files", headers=key).status_code == 200
            assert second.get("/v1/files", headers=key).status_code == 200
            assert first.get("/v1/files", headers=key).status_code == 429
            assert second.get("/v1/files", headers=key).status_code == 429


def test_storage_quota_per_project_refuses_the_upload_and_stores_nothing(own_settings):
    content = jsonl(CHAT, CHAT)
    with app_client(own_settings, max_storage_bytes_per_project=len(content) + 10) as (client, s):
        api, other = api_for(client, s), api_for(client, s)
        retry = {"Idempotency-Key": "upload-1"}
        stored = client.post("/v1/files", files={"file": ("train.jsonl", content)}, data={"purpose": "fine-tune"},
                          headers={**api.headers, **retry})
        assert stored.status_code == 200, stored.text
        before = snapshot(s)
        # The SDK's retry of that upload stores nothing new: it gets the stored file, quota or not.
        again = client.post("/v1/files", files={"file": ("train.jsonl", content)}, data={"purpose": "fine-tune"},
                         headers={**api.headers, **retry})
        assert (again.status_code, again.json().get("id")) == (200, stored.json()["id"]), again.text
        assert snapshot(s) == before
        refused = api.upload(content)
        assert refused.status_code == 413, refused.text
        assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("storage_quota_exceeded", "file")
        assert snapshot(s) == before
        assert other.upload(content).status_code == 200  # the quota is per project


def test_waiting_jobs_beyond_the_per_project_limit_get_429(isolated_settings):
    with app_client(isolated_settings, max_queued_jobs_per_project=1) as (client, s):
        api = api_for(client, s)
        training = api.upload(jsonl(CHAT, CHAT)).json()["id"]
        body = {"model": TINY, "training_file": training}
        first = api.post("/v1/fine_tuning/jobs", json=body)
        assert first.status_code == 200  # no worker: it waits
        before = snapshot(s)
        refused = api.post("/v1/fine_tuning/jobs", json=body)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_queued_jobs"
        assert snapshot(s) == before
        # Pausing frees no place: a paused job comes back to the queue on resume.
        assert api.post(f"/v1/fine_tuning/jobs/{first.json()['id']}/pause").json()["status"] == "paused"
        assert api.post("/v1/fine_tuning/jobs", json=body).status_code == 429


@pytest.mark.parametrize(("limits", "content", "code"), [
    ({"max_upload_lines": 2}, jsonl(CHAT, CHAT, CHAT), "too_many_lines"),
    ({"max_upload_line_bytes": 100}, jsonl({"prompt": "x" * 200, "completion": " y"}), "line_too_long"),
    ({"max_upload_bytes": 100}, jsonl(*[CHAT] * 5), "file_too_large"),
])
def test_upload_limits(own_settings, limits, content, code):
    with app_client(own_settings, **limits) as (client, s):
        api = api_for(client, s)
        before = snapshot(s)
        refused = api.upload(content)
        assert refused.json()["error"]["code"] == code and refused.json()["error"]["param"] == "file"
        assert refused.status_code == (413 if code == "file_too_large" else 400)
        assert snapshot(s) == before


FILENAMES = ["../../../../tmp/evil.jsonl", "/etc/passwd", "..\\..\\win.jsonl", "a\x00b.jsonl", "x" * 2000]


def test_a_filename_is_a_label_never_a_path(own_settings):
    with app_client(own_settings) as (client, s):
        api = api_for(client, s)
        ids = []
        for filename in FILENAMES:
            response = api.upload(jsonl(CHAT, CHAT), filename=filename)
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
            label = response.json()["filename"]
            assert "\x00" not in label and len(label) <= 512
        project = api.get(f"/v1/files/{ids[0]}")  # (the key's project id is the storage folder)
        assert project.status_code == 200
        stored = sorted(p.relative_to(s.resolved_data_dir).as_posix() for p in s.resolved_data_dir.rglob("*")
                        if p.is_file())
        folders = {p.split("/")[1] for p in stored}
        assert len(folders) == 1 and all(p.startswith("files/") for p in stored), stored
        assert sorted(p.rsplit("/", 1)[1] for p in stored) == sorted(f"{i}.jsonl" for i in ids)
        for file_id in ids:
            assert api.get(f"/v1/files/{file_id}/content").content == jsonl(CHAT, CHAT)
