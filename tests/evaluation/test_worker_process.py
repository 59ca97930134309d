"""A real `whetstone worker` process (Celery, Redis, Postgres) runs the training job and then the evaluation."""

from __future__ import annotations

import os
import time

from tests.conftest import TINY
from tests.e2e.server import process
from tests.evaluation.test_evaluations import reply_jsonl
from tests.training.toy_data import _QA, HELD_OUT_QUESTIONS


def wait_for(api, url: str, done: set[str], timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (body := api.get(url).json())["status"] not in done:
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    return body


def test_worker_process_runs_an_evaluation(api, settings, tmp_path):
    env = {**os.environ, "WHETSTONE_DATA_DIR": str(settings.data_dir), "WHETSTONE_DATABASE_URL": settings.database_url,
           "WHETSTONE_BROKER_URL": settings.broker_url, "WHETSTONE_QUEUE": settings.queue,
           "WHETSTONE_BASE_MODELS_DIR": str(settings.base_models_dir)}
    with process(env, ["worker"], tmp_path / "worker.log"):
        train = api.upload(reply_jsonl([q for q, _ in _QA[:10]])).json()["id"]
        job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": train,
                                                     "hyperparameters": {"n_epochs": 8, "learning_rate_multiplier": 10}}).json()
        job = wait_for(api, f"/v1/fine_tuning/jobs/{job['id']}", {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", (job["error"], (tmp_path / "worker.log").read_text()[-3000:])
        held_out = api.upload(reply_jsonl(HELD_OUT_QUESTIONS)).json()["id"]
        evaluation = api.post("/v1/evaluations", json={"model": job["fine_tuned_model"], "file_id": held_out}).json()
        done = wait_for(api, f"/v1/evaluations/{evaluation['id']}", {"completed", "failed"})
    assert done["status"] == "completed", (done["error"], (tmp_path / "worker.log").read_text()[-3000:])
    assert done["report"]["n_examples"] == 3 and done["result_file"]
    assert {r["metric"]: r["verdict"] for r in done["report"]["metrics"]}["perplexity"] == "better"
