"""/v1/fine_tuning/jobs on Postgres + Redis (no worker here: jobs stay queued for a worker)."""

from __future__ import annotations

import json

import openai.types.fine_tuning as ft
import pytest
import redis
from sqlalchemy import func, select

from app.core.db import session_scope
from app.models import FineTuningJob, JobEvent
from tests.conftest import REDIS_URL, TINY
from tests.contract import assert_matches
from tests.data import chat_jsonl


def job_rows(settings) -> int:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalar(select(func.count()).select_from(FineTuningJob)) + session.scalar(
            select(func.count()).select_from(JobEvent))


def queued_messages(settings) -> list[dict]:
    return [json.loads(m) for m in redis.Redis.from_url(REDIS_URL).lrange(settings.queue, 0, -1)]


@pytest.fixture
def training_file(api) -> str:
    return api.upload(chat_jsonl()).json()["id"]


def test_create_job_is_stored_queued_and_openai_shaped(api, settings, training_file):
    response = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file,
                                                      "suffix": "my-model", "seed": 7})
    assert response.status_code == 200, response.text
    job = response.json()
    assert_matches(job, "FineTuningJob")
    ft.FineTuningJob.model_validate(job)
    assert job["id"].startswith("ftjob-") and job["status"] == "validating_files"
    assert job["seed"] == 7 and job["fine_tuned_model"] is None and job["training_file"] == training_file
    assert job["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    # The broker holds the job id, and only that.
    sent = [m["headers"] for m in queued_messages(settings) if job["id"] in m["headers"]["argsrepr"]]
    assert len(sent) == 1 and sent[0]["task"] == "whetstone.train_job" and sent[0]["argsrepr"] == repr([job["id"]])
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == job

    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    assert_matches(events, "ListFineTuningJobEventsResponse")
    created, queued = reversed(events["data"])
    assert created["message"] == f"Created fine-tuning job: {job['id']}"
    position = queued["data"]["queue_position"]
    assert position >= 1 and queued["message"] == f"Job is at position {position} in the queue"


def test_hyperparameters_in_method_are_kept(api, training_file):
    body = {"model": TINY, "training_file": training_file,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}}}
    job = api.post("/v1/fine_tuning/jobs", json=body).json()
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["batch_size"] == 4
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2


def test_list_newest_first_with_after_and_limit(api, training_file):
    ids = [api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file}).json()["id"]
           for _ in range(3)]
    page = api.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert_matches(page, "ListPaginatedFineTuningJobsResponse")
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = api.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": page["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False


@pytest.mark.parametrize(
    ("patch", "param", "status"),
    [
        ({"model": "no-such-model"}, "model", 400),
        ({"training_file": "file-doesnotexist"}, "training_file", 400),
        ({"validation_file": "file-doesnotexist"}, "validation_file", 400),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", 400),
        ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size", 400),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier", 400),
        ({"suffix": "has spaces!"}, "suffix", 400),
        ({"suffix": "x" * 65}, "suffix", 400),
        ({"seed": -1}, "seed", 400),
        ({"unknown_field": 1}, "unknown_field", 400),
    ],
)
def test_bad_job_requests_are_rejected_and_write_nothing(api, settings, training_file, patch, param, status):
    before = job_rows(settings)
    body = {"model": TINY, "training_file": training_file, **patch}
    response = api.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == status, response.text
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert job_rows(settings) == before


def test_another_projects_job_and_file_are_invisible(api, other_api, training_file):
    job_id = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file}).json()["id"]
    for response in (other_api.get(f"/v1/fine_tuning/jobs/{job_id}"),
                     other_api.get(f"/v1/fine_tuning/jobs/{job_id}/events"),
                     other_api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints"),
                     other_api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")):
        assert response.status_code == 404
        assert_matches(response.json(), "ErrorResponse")
    assert other_api.get("/v1/fine_tuning/jobs").json()["data"] == []
    using_their_file = other_api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file})
    assert using_their_file.status_code == 400 and using_their_file.json()["error"]["param"] == "training_file"
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "validating_files"


def test_cancel_then_cancel_again(api, training_file):
    job_id = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file}).json()["id"]
    cancelled = api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]
    messages = [e["message"] for e in api.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]]
    assert messages[0] == "Fine-tuning job cancelled by the user"


def test_events_stream_of_a_finished_job_ends_with_done_and_resumes_by_id(api, training_file):
    job_id = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file}).json()["id"]
    api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    raw = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "true"})
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in raw.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in frames[:-1]]
    events = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames[:-1]]
    for event in events:
        assert_matches(event, "FineTuningJobEvent")
    assert [e["message"] for e in events] == [f"Created fine-tuning job: {job_id}", events[1]["message"],
                                              "Fine-tuning job cancelled by the user"]
    assert events[1]["message"] == f"Job is at position {events[1]['data']['queue_position']} in the queue"
    assert ids == sorted(ids)
    resumed = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "true"},
                      headers={"Last-Event-ID": str(ids[0])})
    assert [f for f in resumed.text.split("\n\n") if f][:-1] == frames[1:-1]


def test_events_pagination_with_after(api, training_file):
    job_id = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file}).json()["id"]
    api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    first = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1}).json()
    assert first["has_more"] is True and len(first["data"]) == 1
    second = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1, "after": first["data"][0]["id"]}).json()
    assert second["has_more"] is True and second["data"][0]["message"].startswith("Job is at position")
    third = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1, "after": second["data"][0]["id"]}).json()
    assert third["has_more"] is False
    assert third["data"][0]["message"].startswith("Created fine-tuning job")
