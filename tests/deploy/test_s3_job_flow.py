"""Uploads, training data, results, checkpoints and adapters all go through the S3 backend:
a job trained by a worker is served by an API whose data dir shares nothing with the worker's."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import TINY, Api, new_key
from tests.data import chat_jsonl
from tests.deploy.conftest import bucket_keys
from worker.tasks import run_job


def test_job_flow_through_s3(s3_settings, tmp_path):
    keys = lambda: bucket_keys(s3_settings.s3_endpoint_url, s3_settings.s3_bucket)  # noqa: E731
    with TestClient(create_app(s3_settings)) as client:
        api = Api(client, new_key(s3_settings))
        bad = api.upload(b'{"messages": "not a list"}\n')
        assert bad.status_code == 400 and keys() == []  # a rejected upload leaves no object

        file_id = api.upload(chat_jsonl()).json()["id"]
        assert [k for k in keys() if k.endswith(f"{file_id}.jsonl")]
        assert not list(s3_settings.storage_dir.rglob("*.jsonl"))  # nothing in the local directory
        assert api.get(f"/v1/files/{file_id}/content").content == chat_jsonl()
        job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id,
                                                      "hyperparameters": {"n_epochs": 1}}).json()

    # The worker runs on "another host": its own data dir, only Postgres and the bucket in common.
    worker_settings = s3_settings.model_copy(update={"data_dir": tmp_path / "worker-host"})
    worker_settings.ensure_dirs()
    run_job(worker_settings, job["id"])
    shutil.rmtree(worker_settings.resolved_data_dir)  # the worker host is gone

    stored = keys()
    assert f"wh/jobs/{job['id']}/adapter/adapter_model.safetensors" in stored
    assert f"wh/jobs/{job['id']}/adapter/.complete" in stored
    assert any(k.startswith(f"wh/jobs/{job['id']}/checkpoints/") and k.endswith(".complete") for k in stored)

    with TestClient(create_app(s3_settings)) as client:
        api = Api(client, api.headers["Authorization"].removeprefix("Bearer "))
        done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["error"]
        [result_id] = done["result_files"]
        csv = api.get(f"/v1/files/{result_id}/content")
        assert csv.status_code == 200 and csv.text.startswith("step,train_loss")
        answer = api.post("/v1/completions", json={"model": done["fine_tuned_model"], "prompt": "Hi",
                                                   "max_tokens": 3})
        assert answer.status_code == 200, answer.text
        assert (s3_settings.resolved_data_dir / "cache" / "jobs" / job["id"] / "adapter"
                / "adapter_model.safetensors").is_file()

        assert api.delete(f"/v1/files/{file_id}").status_code == 200
        assert not [k for k in keys() if k.endswith(f"{file_id}.jsonl")]
