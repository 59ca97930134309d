"""The legacy /v1/fine-tunes API on Postgres with real training of the tiny model (run_job is
what the Celery task runs). The openai 0.28 CLI drives it end to end in tests/e2e."""

from __future__ import annotations

import csv
import io
import json
import re

from sqlalchemy import update

from app.core.db import session_scope
from app.models import FineTuningJob
from tests.conftest import TINY
from tests.data import completion_jsonl
from worker.tasks import run_job


def classification_jsonl(n: int) -> bytes:
    rows = [{"prompt": f"Is {i} even?\n\n###\n\n", "completion": " yes" if i % 2 == 0 else " no"} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def create(api, **body):
    return api.post("/v1/fine-tunes", json={"model": TINY, **body})


def test_legacy_fine_tune_trains_with_legacy_shapes_names_and_results(api, settings):
    training = api.upload(classification_jsonl(12)).json()["id"]
    validation = api.upload(classification_jsonl(6)).json()["id"]
    response = create(api, training_file=training, validation_file=validation, suffix="even", n_epochs=2,
                      batch_size=2, learning_rate_multiplier=2.0, compute_classification_metrics=True,
                      classification_positive_class=" yes", classification_betas=[0.5, 2])
    assert response.status_code == 200, response.text
    fine_tune = response.json()
    assert fine_tune["object"] == "fine-tune" and fine_tune["status"] == "pending"
    assert fine_tune["id"].startswith("ftjob-")  # one job: the same id under /v1/fine_tuning/jobs
    assert fine_tune["hyperparams"]["prompt_loss_weight"] == 0.01
    assert [f["id"] for f in fine_tune["training_files"]] == [training]
    assert [f["id"] for f in fine_tune["validation_files"]] == [validation]
    assert fine_tune["events"][0]["object"] == "fine-tune-event"

    run_job(settings, fine_tune["id"])

    done = api.get(f"/v1/fine-tunes/{fine_tune['id']}").json()
    assert done["status"] == "succeeded", done
    assert re.fullmatch(rf"{TINY}:ft-p[0-9a-f]{{10}}:even-\d{{4}}(-\d\d){{5}}", done["fine_tuned_model"])
    assert {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 2.0}.items() <= done["hyperparams"].items()
    assert done["hyperparams"]["compute_classification_metrics"] is True
    modern = api.get(f"/v1/fine_tuning/jobs/{fine_tune['id']}").json()
    assert modern["status"] == "succeeded" and modern["fine_tuned_model"] == done["fine_tuned_model"]

    [result] = done["result_files"]
    assert result["purpose"] == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(api.get(f"/v1/files/{result['id']}/content").text)))
    assert list(rows[0])[:9] == ["step", "elapsed_tokens", "elapsed_examples", "training_loss",
                                 "training_sequence_accuracy", "training_token_accuracy", "validation_loss",
                                 "validation_sequence_accuracy", "validation_token_accuracy"]
    # 12 examples, batch 2: 6 steps an epoch, 2 epochs; an example is counted once per epoch.
    assert rows[-1]["step"] == "12" and rows[-1]["elapsed_examples"] == "24"
    assert int(rows[-1]["elapsed_tokens"]) > int(rows[0]["elapsed_tokens"]) > 0
    assert rows[-1]["validation_loss"] and 0 <= float(rows[-1]["validation_sequence_accuracy"]) <= 1
    last = rows[-1]
    accuracy = float(last["classification/accuracy"])
    assert round(accuracy * 6) == accuracy * 6  # k of the 6 validation examples
    for name in ("precision", "recall", "auroc", "auprc", "f0.5", "f2.0"):
        assert 0 <= float(last[f"classification/{name}"]) <= 1, name
    assert all(r["classification/accuracy"] == "" for r in rows[:-1])

    # The legacy name is a model: completions answer with it.
    completion = api.post("/v1/completions", json={"model": done["fine_tuned_model"], "prompt": "Is 4 even?",
                                                    "max_tokens": 2})
    assert completion.status_code == 200, completion.text
    assert completion.json()["model"] == done["fine_tuned_model"]

    events = api.get(f"/v1/fine-tunes/{fine_tune['id']}/events").json()
    assert events["object"] == "list" and events["data"][0]["object"] == "fine-tune-event"
    messages = [e["message"] for e in events["data"]]
    assert messages[-1] == "The job has successfully completed" and "Fine-tuning job started" in messages
    assert done["hyperparams"]["prompt_loss_weight"] == 0.01

    listed = api.get("/v1/fine-tunes").json()
    assert [f["id"] for f in listed["data"]] == [fine_tune["id"]] and listed["data"][0].get("events") is None


def test_two_legacy_fine_tunes_created_in_the_same_second_both_get_a_model(api, settings):
    """The legacy name carries the creation second; a second job of that second gets its short id too."""
    training = api.upload(completion_jsonl(10)).json()["id"]
    jobs = [create(api, training_file=training, n_epochs=1).json()["id"] for _ in range(2)]
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id.in_(jobs)).values(created_at=1700000000))
    names = []
    for job in jobs:
        run_job(settings, job)
        done = api.get(f"/v1/fine-tunes/{job}").json()
        assert done["status"] == "succeeded", done
        names.append(done["fine_tuned_model"])
    assert re.fullmatch(rf"{TINY}:ft-p[0-9a-f]{{10}}-2023-11-14-22-13-20", names[0])
    assert names[1] == f"{names[0]}-{jobs[1].removeprefix('ftjob-')[:8]}"
    for name in names:  # each one answers
        response = api.post("/v1/completions", json={"model": name, "prompt": "Double 3:", "max_tokens": 2})
        assert response.status_code == 200, response.text


def test_legacy_defaults_and_stream(api, settings):
    training = api.upload(completion_jsonl(10)).json()["id"]
    fine_tune = create(api, training_file=training).json()
    assert fine_tune["hyperparams"]["n_epochs"] == 4 and fine_tune["hyperparams"]["prompt_loss_weight"] == 0.01
    run_job(settings, fine_tune["id"])
    done = api.get(f"/v1/fine-tunes/{fine_tune['id']}").json()
    assert done["status"] == "succeeded"
    assert re.fullmatch(rf"{TINY}:ft-[\w-]+-\d{{4}}(-\d\d){{5}}", done["fine_tuned_model"])  # no suffix
    # 10 examples, batch size auto (1), 4 epochs: 40 steps.
    assert done["hyperparams"]["batch_size"] == 1 and done["hyperparams"]["n_epochs"] == 4
    with api.client.stream("GET", f"/v1/fine-tunes/{fine_tune['id']}/events", params={"stream": "true"},
                           headers=api.headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(set(e) == {"object", "created_at", "level", "message"} for e in events)
    assert events[-1]["message"] == "The job has successfully completed"


def test_legacy_cancel_and_errors(api):
    training = api.upload(completion_jsonl(10)).json()["id"]
    fine_tune = create(api, training_file=training, suffix="x").json()
    cancelled = api.post(f"/v1/fine-tunes/{fine_tune['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    again = api.post(f"/v1/fine-tunes/{fine_tune['id']}/cancel")
    assert again.status_code == 400 and again.json()["error"]["code"] == "job_not_cancellable"

    def error(response, param):
        assert response.status_code == 400, response.text
        body = response.json()["error"]
        assert body["param"] == param and body["type"] == "invalid_request_error", body
        return body["message"]

    error(create(api, training_file=training, n_epochs=0), "n_epochs")
    error(create(api, training_file=training, prompt_loss_weight=1.5), "prompt_loss_weight")
    error(create(api, training_file=training, compute_classification_metrics=True), "validation_file")
    error(create(api, training_file=training, validation_file=training, compute_classification_metrics=True),
          "classification_positive_class")
    error(create(api, training_file="file-nope"), "training_file")
    error(create(api, training_file=training, model="no-such-model"), "model")
    assert api.get("/v1/fine-tunes/ftjob-nope").status_code == 404
    assert len(api.get("/v1/fine-tunes").json()["data"]) == 1  # the rejected creates left no job


def test_prompt_loss_weight_reaches_the_trainer(api, settings):
    """Same data, same seed, prompt_loss_weight 0 vs 0.5: with a trainer that supports the knob the
    loss differs (prompt tokens now count); with one that does not, the job says so."""
    training = api.upload(completion_jsonl(10)).json()["id"]
    losses = []
    for weight in (0.0, 0.5):
        job = create(api, training_file=training, n_epochs=1, prompt_loss_weight=weight).json()
        # Same seed for both: set on the one job row both APIs share.
        with session_scope(settings.resolved_database_url) as session:
            session.execute(update(FineTuningJob).where(FineTuningJob.id == job["id"]).values(seed=1234))
        run_job(settings, job["id"])
        done = api.get(f"/v1/fine-tunes/{job['id']}").json()
        assert done["status"] == "succeeded" and done["hyperparams"]["prompt_loss_weight"] == weight
        rows = list(csv.DictReader(io.StringIO(api.get(f"/v1/files/{done['result_files'][0]['id']}/content").text)))
        losses.append([float(r["training_loss"]) for r in rows])
    assert losses[0] != losses[1]  # prompt tokens weigh in the loss, or not
