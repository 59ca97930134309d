"""Experiment trackers: a job's wandb integration (offline, no network) and an MLflow tracking URI
receive the job's parameters and its metrics at every logged step."""

from __future__ import annotations

import struct

import pytest

from tests.contract import assert_matches
from tests.data import chat_jsonl
from tests.worker.test_job_lifecycle import create
from worker.tasks import run_job

WANDB = {"type": "wandb", "wandb": {"project": "my-project", "name": "first try", "tags": ["exp-1"], "entity": None}}


def wandb_records(path) -> list:
    """The records of a wandb run file (a LevelDB-style log of protobuf records, as `wandb sync` reads it)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, block = [], b"", 32768
    offset = 7  # the file header: ident, magic, version
    while offset + 7 <= len(data):
        room = block - offset % block
        if room < 7:  # a block's tail too short for a header is padding
            offset += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if length == 0 and kind == 0:
            break
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(path) -> list[dict]:
    import json

    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_integration_and_mlflow_receive_every_logged_step(api, settings, tmp_path):
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = settings.model_copy(update={"mlflow_tracking_uri": mlflow_uri, "mlflow_experiment": "tests"})
    job = create(api, integrations=[WANDB], hyperparameters={"n_epochs": 1})
    assert job["integrations"] == [WANDB]
    run_job(settings, job["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert_matches(done, "FineTuningJob")
    assert done["integrations"] == [WANDB]
    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    logged = {e["data"]["step"]: e["data"]["train_loss"] for e in events if e["type"] == "metrics"}
    assert len(logged) >= 3 and not [e for e in events if e["level"] == "warn"]

    [run_file] = (settings.jobs_dir / job["id"] / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, run.run_id) == ("my-project", "first try", job["id"])
    assert {"exp-1", f"whetstone/{job['id']}"} <= set(run.tags)
    history = wandb_history(run_file)
    assert {row["_step"]: row["train_loss"] for row in history} == pytest.approx(logged)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    [mlrun] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert mlrun.info.run_name == job["id"] and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["method"] == "supervised" and mlrun.data.params["n_epochs"] == "1"
    assert mlrun.data.params["batch_size"] == "1"  # "auto", as resolved for this file
    losses = client.get_metric_history(mlrun.info.run_id, "train_loss")
    assert {m.step: m.value for m in losses} == pytest.approx(logged)


def test_wandb_integration_without_wandb_installed_is_a_400(api, monkeypatch):
    import app.services.jobs as jobs

    monkeypatch.setattr(jobs, "tracker_installed", lambda name: False)  # stands in for a server without the extra
    file_id = api.upload(chat_jsonl()).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": file_id,
                                                      "integrations": [WANDB]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "integrations[0]" and error["code"] == "integration_not_available"
    assert "wandb" in error["message"] and "whetstone[tracking]" in error["message"]
    assert api.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.parametrize("integration, param", [
    ({"type": "wandb", "wandb": {"name": "no project"}}, "integrations"),
    ({"type": "comet", "wandb": {"project": "p"}}, "integrations"),
    ({"type": "wandb", "wandb": {"project": "p", "tags": "not-a-list"}}, "integrations"),
])
def test_malformed_integrations_are_a_400(api, integration, param):
    file_id = api.upload(chat_jsonl()).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": file_id,
                                                      "integrations": [integration]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)
