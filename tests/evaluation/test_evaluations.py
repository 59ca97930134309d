"""Evaluations through the API on Postgres: a fine-tune of the tiny model on a fixed reply, measured
against its base model. The worker's task function runs directly (the Celery wiring is the same as
for training jobs)."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import TINY
from tests.training.toy_data import _QA, HELD_OUT_QUESTIONS, PHRASE, prompt_messages
from worker.eval_tasks import run_evaluation
from worker.tasks import run_job


def reply_jsonl(questions: list[str]) -> bytes:
    rows = [{"messages": [*prompt_messages(q), {"role": "assistant", "content": PHRASE}]} for q in questions]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def trained(api, settings) -> dict:
    """A job on 10 examples that all answer PHRASE, with a validation file."""
    train = api.upload(reply_jsonl([q for q, _ in _QA[:10]])).json()["id"]
    valid = api.upload(reply_jsonl([q for q, _ in _QA[10:13]])).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": train, "validation_file": valid,
                                                 "hyperparameters": {"n_epochs": 12, "learning_rate_multiplier": 10}})
    run_job(settings, job.json()["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job.json()['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    return done


def test_fine_tune_beats_its_base_and_the_best_checkpoint_is_reported(api, settings, trained):
    events = api.get(f"/v1/fine_tuning/jobs/{trained['id']}/events", params={"limit": 1000}).json()["data"]
    valid = {e["data"]["step"]: e["data"]["valid_loss"] for e in events if e["data"] and "valid_loss" in e["data"]
             and "total_steps" in e["data"]}
    assert all(e["data"]["valid_perplexity"] == pytest.approx(math.exp(e["data"]["valid_loss"]))
               for e in events if e["data"] and "valid_loss" in e["data"])
    [best] = [e for e in events if e["message"].startswith("Best checkpoint by validation loss")]
    assert best["data"]["step"] == min(valid, key=valid.get)
    checkpoints = {c["fine_tuned_model_checkpoint"] for c in
                   api.get(f"/v1/fine_tuning/jobs/{trained['id']}/checkpoints", params={"limit": 100}).json()["data"]}
    assert best["data"]["fine_tuned_model_checkpoint"] in checkpoints

    held_out = api.upload(reply_jsonl(HELD_OUT_QUESTIONS + [q for q, _ in _QA[30:33]])).json()["id"]
    created = api.post("/v1/evaluations", json={"model": trained["fine_tuned_model"], "file_id": held_out})
    assert created.status_code == 200, created.text
    evaluation = created.json()
    assert evaluation["status"] == "queued" and evaluation["object"] == "evaluation"
    assert evaluation["base_model"] == TINY and evaluation["data_source"]["source"] == {"type": "file_id", "id": held_out}

    run_evaluation(settings, evaluation["id"])
    done = api.get(f"/v1/evaluations/{evaluation['id']}").json()
    assert done["status"] == "completed", done["error"]
    rows = {r["metric"]: r for r in done["report"]["metrics"]}
    for metric in ("bleu", "rouge_l", "perplexity"):
        assert rows[metric]["verdict"] == "better", rows[metric]
    assert rows["exact_match"]["fine_tuned"] >= rows["exact_match"]["base"]
    assert rows["perplexity"]["fine_tuned"] < rows["perplexity"]["base"] / 10
    assert done["report"]["helped"] is True and done["report"]["summary"].startswith("Fine-tuning helped")
    assert "| rouge_l (higher is better) |" in done["report_table"]
    assert done["result_counts"]["total"] == 6

    samples = [json.loads(line) for line in api.get(f"/v1/files/{done['result_file']}/content").text.splitlines()]
    assert len(samples) == 6 and all(s["reference"] == PHRASE for s in samples)
    assert sum(s["fine_tuned"].startswith("Ahoy") for s in samples) > sum(s["base"].startswith("Ahoy") for s in samples)

    listing = api.get("/v1/evaluations").json()
    assert [e["id"] for e in listing["data"]] == [evaluation["id"]]
    run_evaluation(settings, evaluation["id"])  # a redelivered message changes nothing
    assert api.get(f"/v1/evaluations/{evaluation['id']}").json() == done


def test_bad_requests_are_openai_errors_and_create_nothing(api, other_api):
    file_id = api.upload(reply_jsonl(["Hi?"])).json()["id"]
    cases = [({"model": TINY, "file_id": file_id}, "model"),
             ({"model": "ft:nope", "file_id": file_id}, "model"),
             ({"file_id": file_id}, "model")]
    for body, param in cases:
        response = api.post("/v1/evaluations", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert api.get("/v1/evaluations").json()["data"] == []
    missing = api.get("/v1/evaluations/eval-nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


def test_cli_prints_the_stored_report_and_runs_one_locally(api, settings, trained, tiny_model_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from app.cli import main

    held_out = tmp_path / "held.jsonl"
    held_out.write_bytes(reply_jsonl(HELD_OUT_QUESTIONS))
    adapter = settings.jobs_dir / trained["id"] / "adapter"
    result = CliRunner().invoke(main, ["evaluate", str(held_out), "--adapter", str(adapter), "--base", str(tiny_model_dir),
                                       "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "| metric | base | fine-tuned | change | verdict |" in result.output
    assert "Fine-tuning helped" in result.output and "(3 held-out examples)" in result.output
    assert len(json.loads((tmp_path / "r.json").read_text())["samples"]) == 3

    file_id = api.upload(held_out.read_bytes()).json()["id"]
    evaluation = api.post("/v1/evaluations", json={"model": trained["fine_tuned_model"], "file_id": file_id}).json()
    run_evaluation(settings, evaluation["id"])
    monkeypatch.setenv("WHETSTONE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("WHETSTONE_DATA_DIR", str(settings.data_dir))  # restored after the test
    shown = CliRunner().invoke(main, ["evaluation", evaluation["id"], "--data-dir", str(settings.data_dir)])
    assert shown.exit_code == 0, shown.output
    assert api.get(f"/v1/evaluations/{evaluation['id']}").json()["report_table"] in shown.output
