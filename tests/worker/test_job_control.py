"""Cancel, pause/resume, the per-project limit and fencing, on Postgres with real PEFT training of
the tiny model. `run_job` runs in a thread here (what the Celery task runs); the tests with real
worker processes that get killed are in test_worker_processes.py."""

from __future__ import annotations

import threading
import time

import redis
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.models import FineTuningJob
from app.services import job_state as state
from tests.conftest import REDIS_URL, TINY
from tests.contract import assert_matches
from tests.data import chat_jsonl
from worker.reaper import take_back
from worker.tasks import JobRun, run_job


def create(api, n: int = 40, epochs: int = 20) -> str:
    file_id = api.upload(chat_jsonl(n)).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id,
                                                      "hyperparameters": {"n_epochs": epochs}})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def events(api, job_id: str) -> list[dict]:
    return list(reversed(api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]))


def wait_for(predicate, timeout: float = 120, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return value


def start(settings: Settings, job_id: str) -> threading.Thread:
    thread = threading.Thread(target=run_job, args=(settings, job_id))
    thread.start()
    return thread


def metrics_steps(api, job_id: str) -> list[int]:
    return [e["data"]["step"] for e in events(api, job_id) if e["type"] == "metrics"]


def test_cancel_stops_within_one_step(api, settings):
    job_id = create(api)
    worker = start(settings, job_id)
    wait_for(lambda: len(metrics_steps(api, job_id)) >= 2)
    cancelled_at = time.monotonic()
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    stopped = wait_for(lambda: next((e for e in events(api, job_id) if e["message"].startswith("Training stopped at")),
                                    None), every=0.005)
    # A tiny-model step takes a few milliseconds; the worker checks before every step.
    assert time.monotonic() - cancelled_at < 1.0
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "cancelled"
    assert stopped["data"]["step"] < 800
    # Cancelling a finished job answers a clear error and changes nothing.
    again = api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert again.status_code == 400
    assert_matches(again.json(), "ErrorResponse")
    assert again.json()["error"]["code"] == "job_not_cancellable"
    assert "cancelled" in again.json()["error"]["message"]
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()["error"]["code"] == "job_not_resumable"
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()["error"]["code"] == "job_not_pausable"


def test_pause_checkpoints_frees_the_worker_and_resume_continues(api, settings):
    job_id = create(api, n=20, epochs=10)  # 200 steps
    worker = start(settings, job_id)
    wait_for(lambda: len(metrics_steps(api, job_id)) >= 3)
    running = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert running["status"] == "running" and running["estimated_finish"] >= running["created_at"]
    paused = api.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()
    assert paused["status"] == "paused" and paused["estimated_finish"] is None
    worker.join(timeout=60)
    assert not worker.is_alive()  # the worker is free
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "paused"
    log = events(api, job_id)
    pause_event = next(e for e in log if e["message"].startswith("Fine-tuning job paused at step"))
    step = pause_event["data"]["step"]
    assert 0 < step < 200
    checkpoints = [c["step_number"] for c in api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]]
    assert step in checkpoints  # saved where it paused

    resumed = api.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    run_job(settings, job_id)
    done = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    log = events(api, job_id)
    messages = [e["message"] for e in log]
    resumed_at = messages.index(f"Fine-tuning job resumed from the checkpoint at step {step}")
    assert messages.count("Fine-tuning job started") == 1
    after = [e["data"]["step"] for e in log[resumed_at:] if e["type"] == "metrics"]
    assert after and after[0] > step and after[-1] == 200  # continued, not restarted
    assert [m["id"] for m in api.get("/v1/models").json()["data"]].count(done["fine_tuned_model"]) == 1


def test_project_limit_keeps_the_second_job_queued_until_a_slot_frees(api, settings):
    limited = settings.model_copy(update={"max_running_jobs_per_project": 1})
    first, second = create(api, n=12, epochs=10), create(api, n=12, epochs=1)
    worker = start(limited, first)
    wait_for(lambda: api.get(f"/v1/fine_tuning/jobs/{first}").json()["status"] == "running")
    queued_messages = redis.Redis.from_url(REDIS_URL).llen
    before = queued_messages(settings.queue)
    run_job(limited, second)  # a second worker takes the message: no slot
    assert queued_messages(settings.queue) == before  # not sent again until a slot frees (no busy loop)
    waiting = api.get(f"/v1/fine_tuning/jobs/{second}").json()
    assert waiting["status"] == "queued"
    note = [e for e in events(api, second) if e["message"].startswith("Waiting for a slot")]
    assert note and note[0]["data"]["queue_position"] >= 1
    worker.join(timeout=120)
    assert api.get(f"/v1/fine_tuning/jobs/{first}").json()["status"] == "succeeded"
    run_job(limited, second)  # the message the first job's worker sent when it finished
    assert api.get(f"/v1/fine_tuning/jobs/{second}").json()["status"] == "succeeded"


def test_queued_jobs_hear_their_new_position_as_jobs_ahead_leave_the_queue(api, settings):
    first, second, third = (create(api, n=12, epochs=1) for _ in range(3))

    def position(job_id: str) -> int:
        return [e for e in events(api, job_id) if "queue_position" in (e["data"] or {})][-1]["data"]["queue_position"]

    second_at, third_at = position(second), position(third)
    assert third_at == second_at + 1
    run_job(settings, first)  # the job ahead starts (and finishes)
    assert api.get(f"/v1/fine_tuning/jobs/{first}").json()["status"] == "succeeded"
    assert (position(second), position(third)) == (second_at - 1, third_at - 1)
    moved = [e for e in events(api, third) if e["message"] == f"Job is at position {third_at - 1} in the queue"]
    assert len(moved) == 1
    assert api.post(f"/v1/fine_tuning/jobs/{second}/cancel").status_code == 200  # so does a cancelled one
    assert position(third) == third_at - 2
    assert api.post(f"/v1/fine_tuning/jobs/{third}/cancel").status_code == 200


def test_a_stale_worker_cannot_write_to_a_job_it_lost(api, settings):
    job_id = create(api, n=12, epochs=1)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        job = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        job.project  # noqa: B018
        assert state.claim(session, job.pk, "stale/1", lease_seconds=0.2)
        assert not state.claim(session, job.pk, "other/2", lease_seconds=30)  # held: a redelivery claims nothing
    with session_scope(url) as session:
        assert state.transition(session, job.pk, "queued", expected=["validating_files"], owner="stale/1")
        assert state.transition(session, job.pk, "running", expected=["queued"], owner="stale/1")
    stale = JobRun(settings, job, "org", "stale/1")
    time.sleep(0.3)  # the stale worker stops renewing its lease
    assert take_back(settings, job.pk, "stale/1", 0) == "queued"
    with session_scope(url) as session:
        assert state.claim(session, job.pk, "fresh/3", lease_seconds=30)
    for write in (lambda: stale.event("late"), lambda: stale.on_checkpoint(1, settings.jobs_dir, {})):
        try:
            write()
            raise AssertionError("a stale worker wrote to the job")
        except state.LeaseLost:
            pass
    assert stale.should_stop()
    assert not stale.succeed(settings.jobs_dir, 1, "file-x")
    stale.fail({"code": "x", "message": "late", "param": None})
    with session_scope(url) as session:
        row = session.scalar(select(FineTuningJob).where(FineTuningJob.pk == job.pk))
        assert (row.status, row.lease_owner, row.error, row.lost_attempts) == ("queued", "fresh/3", None, 1)
    assert "late" not in [e["message"] for e in events(api, job_id)]
    try:
        with session_scope(url) as session:
            state.transition(session, job.pk, "running", expected=["succeeded"])
        raise AssertionError("an illegal transition was allowed")
    except state.IllegalTransition:
        pass
