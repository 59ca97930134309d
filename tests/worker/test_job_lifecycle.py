"""The worker's job lifecycle on Postgres, with real PEFT training of the tiny model.

`run_job` is what the Celery task runs; calling it directly here keeps these tests fast.
A real Celery worker process runs in the end-to-end tests."""

from __future__ import annotations

import threading
import time

import openai.types.fine_tuning as ft
from safetensors import safe_open

from tests.conftest import TINY
from tests.contract import assert_matches
from tests.data import chat_jsonl, completion_jsonl
from worker.tasks import run_job


def create(api, content: bytes = chat_jsonl(), **extra) -> dict:
    file_id = api.upload(content).json()["id"]
    body = {"model": TINY, "training_file": file_id, "hyperparameters": {"n_epochs": 2}, **extra}
    response = api.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def messages(api, job_id: str) -> list[str]:
    events = api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return [e["message"] for e in reversed(events)]


def test_job_trains_to_a_fine_tuned_model(api, settings):
    job = create(api, suffix="sum", validation_file=api.upload(chat_jsonl(4)).json()["id"])
    run_job(settings, job["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert_matches(done, "FineTuningJob")
    ft.FineTuningJob.model_validate(done)
    assert done["status"] == "succeeded", done["error"]
    short = job["id"].removeprefix("ftjob-")[:8]
    org = done["fine_tuned_model"].split(":")[2]
    assert done["fine_tuned_model"] == f"ft:{TINY}:{org}:sum:{short}"
    assert done["trained_tokens"] > 0 and done["finished_at"] >= done["created_at"]
    assert done["hyperparameters"] == {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.0}

    log = messages(api, job["id"])
    assert log[1].startswith("Job is at position")
    del log[1]
    assert log[:4] == [f"Created fine-tuning job: {job['id']}", f"Validating training file: {job['training_file']}",
                       f"Validating validation file: {job['validation_file']}",
                       "Files validated, moving job to queued state"]
    assert "Fine-tuning job started" in log and log[-1] == "The job has successfully completed"
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert metrics and all({"step", "train_loss", "tokens_per_second"} <= set(e["data"]) for e in metrics)
    assert any("valid_loss" in e["data"] for e in metrics)

    # The adapter is safetensors, on disk, and listed as a model.
    adapter = settings.jobs_dir / job["id"] / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not list(adapter.glob("*.bin"))
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as tensors:
        assert any("lora_A" in k for k in tensors.keys())
    models = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert done["fine_tuned_model"] in models and TINY in models

    # One checkpoint per epoch, with metrics; the results file is a CSV the user can download.
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert_matches(checkpoints, "ListFineTuningJobCheckpointsResponse")
    steps = [c["step_number"] for c in checkpoints["data"]]
    assert steps == [24, 12]
    assert checkpoints["data"][0]["fine_tuned_model_checkpoint"] == f"{done['fine_tuned_model']}:ckpt-step-24"
    [result_id] = done["result_files"]
    csv = api.get(f"/v1/files/{result_id}/content").text.splitlines()
    assert csv[0] == ("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate,"
                      "tokens_per_second") and len(csv) > 2
    assert all(float(line.split(",")[5]) > 0 and float(line.split(",")[6]) > 0 for line in csv[1:])
    assert api.get(f"/v1/files/{result_id}").json()["purpose"] == "fine-tune-results"


def test_legacy_prompt_completion_job_succeeds(api, settings):
    job = create(api, completion_jsonl())
    run_job(settings, job["id"])
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded"


def test_delivering_the_same_job_twice_trains_it_once(api, settings):
    job = create(api)
    run_job(settings, job["id"])
    first = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    log = messages(api, job["id"])
    run_job(settings, job["id"])
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == first
    assert messages(api, job["id"]) == log


def test_too_few_examples_fails_with_openai_error(api, settings):
    job = create(api, chat_jsonl(5))
    run_job(settings, job["id"])
    failed = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert_matches(failed, "FineTuningJob")
    assert failed["status"] == "failed" and failed["fine_tuned_model"] is None
    assert failed["error"] == {"code": "invalid_training_file", "param": "training_file",
                               "message": "Training file has 5 example(s), but must have at least 10 examples"}
    assert messages(api, job["id"])[-1].startswith("Fine-tuning job failed: Training file has 5 example(s)")


def test_cancel_while_training_stops_it_and_keeps_cancelled(api, settings):
    job = create(api, chat_jsonl(40), hyperparameters={"n_epochs": 20})
    worker = threading.Thread(target=run_job, args=(settings, job["id"]))
    worker.start()
    deadline = time.monotonic() + 120
    while api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert api.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    worker.join(timeout=120)
    assert not worker.is_alive()
    final = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None
    assert job["id"] not in str(api.get("/v1/models").json())
    assert not (settings.jobs_dir / job["id"] / "adapter" / "adapter_model.safetensors").exists()


def test_checkpoints_listed_are_the_ones_kept_and_each_answers(api, settings):
    """The engine keeps the last few checkpoints (plus the best); the list and the model ids follow."""
    job = create(api)  # 12 examples, batch 1, 2 epochs: 24 steps
    run_job(settings.model_copy(update={"checkpoint_every": 3}), job["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    made = [m for m in messages(api, job["id"]) if m.startswith("Checkpoint created at step")]
    listed = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", params={"limit": 100}).json()["data"]
    assert len(made) > len(listed) >= 1  # some were pruned, and they left the list
    on_disk = {p.name for p in (settings.jobs_dir / job["id"] / "checkpoints").iterdir() if not p.name.startswith(".")}
    assert len(on_disk) == len(listed)
    for checkpoint in listed:
        answer = api.post("/v1/completions", json={"model": checkpoint["fine_tuned_model_checkpoint"],
                                                   "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200, answer.text
