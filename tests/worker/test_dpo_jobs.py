"""DPO jobs through the API: validated on create, trained by the worker, served like any fine-tune."""

from __future__ import annotations

import json

import openai.types.fine_tuning as ft
import pytest

from tests.conftest import TINY
from tests.contract import assert_matches
from tests.data import chat_jsonl, preference_jsonl
from tests.training.toy_data import pirate_preference_examples
from worker.tasks import run_job

@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


DPO = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 5.0}}}


def create_dpo(api, method=DPO, content: bytes = preference_jsonl(12), **extra):
    file_id = api.upload(content).json()["id"]
    return api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "method": method, **extra})


def reply_logprob(api, model: str, tokenizer, example: dict, key: str) -> float:
    """What a client measures: the served model's log-probability of the conversation with this reply
    (completions with echo and logprobs score the prompt's own tokens)."""
    messages = example["input"]["messages"] + example[key]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    response = api.post("/v1/completions", json={"model": model, "prompt": text, "echo": True, "logprobs": 0,
                                                 "max_tokens": 1})
    assert response.status_code == 200, response.text
    return sum(p for p in response.json()["choices"][0]["logprobs"]["token_logprobs"][:-1] if p is not None)


def test_a_dpo_job_teaches_the_served_model_to_prefer_the_preferred_reply(api, settings, tokenizer):
    response = create_dpo(api, validation_file=api.upload(preference_jsonl(4, seed=3)).json()["id"])
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["beta"] == 0.1  # auto
    run_job(settings, job["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert_matches(done, "FineTuningJob")
    ft.FineTuningJob.model_validate(done)
    assert done["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 5.0, "beta": 0.1}}}

    events = api.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    metrics = [e["data"] for e in reversed(events) if e["type"] == "metrics"]
    assert all({"train_loss", "train_reward_accuracy", "train_reward_margin"} <= set(m) for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert any("valid_reward_accuracy" in m for m in metrics)

    [result_id] = done["result_files"]
    rows = api.get(f"/v1/files/{result_id}/content").text.splitlines()
    assert rows[0].split(",")[:7] == ["step", "train_loss", "train_accuracy", "valid_loss",
                                      "valid_mean_token_accuracy", "learning_rate", "tokens_per_second"]
    assert rows[0].split(",")[7:] == ["train_reward_margin", "valid_reward_margin", "train_chosen_reward",
                                      "train_rejected_reward"]
    assert all(0 <= float(r.split(",")[2]) <= 1 and r.split(",")[7] for r in rows[1:])

    model = done["fine_tuned_model"]
    assert model in [m["id"] for m in api.get("/v1/models").json()["data"]]
    held_out = pirate_preference_examples(3, seed=11)
    for example in held_out:
        margin = {m: reply_logprob(api, m, tokenizer, example, "preferred_output")
                  - reply_logprob(api, m, tokenizer, example, "non_preferred_output") for m in (TINY, model)}
        assert margin[model] > margin[TINY] + 0.5, margin


def test_dpo_create_rejects_what_cannot_train(api):
    def error(response, status=400):
        assert response.status_code == status, response.text
        assert_matches(response.json(), "ErrorResponse")
        return response.json()["error"]

    wrong_data = error(create_dpo(api, content=chat_jsonl()))
    assert wrong_data["param"] == "training_file" and "preference format" in wrong_data["message"]
    supervised_on_pairs = error(create_dpo(api, method={"type": "supervised"}))
    assert supervised_on_pairs["param"] == "training_file" and "'dpo'" in supervised_on_pairs["message"]
    beta = error(create_dpo(api, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}))
    assert "beta" in beta["param"]
    assert "beta" in error(create_dpo(api, method={"type": "supervised", "supervised": {
        "hyperparameters": {"beta": 0.2}}}, content=chat_jsonl()))["param"]
    mixed = error(create_dpo(api, method={"type": "dpo", "supervised": {"hyperparameters": {}}}))
    assert mixed["param"] == "method.supervised"
    assert error(create_dpo(api, method={"type": "reinforcement"}))["param"].startswith("method")
    prompt_weight = error(create_dpo(api, method={"type": "dpo", "dpo": {"hyperparameters": {"prompt_loss_weight": 0.1}}}))
    assert prompt_weight["param"] == "method.dpo.hyperparameters.prompt_loss_weight"
    # a validation file in another format than the training file
    other = error(create_dpo(api, validation_file=api.upload(chat_jsonl()).json()["id"]))
    assert other["param"] == "validation_file"
    assert api.get("/v1/fine_tuning/jobs").json()["data"] == []  # nothing was created


@pytest.mark.parametrize("line, reason", [
    ({"input": {"messages": [{"role": "user", "content": "hi"}]},
      "preferred_output": [{"role": "assistant", "content": "a"}]}, "'non_preferred_output' is missing"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": {"role": "assistant", "content": "a"},
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "exactly one assistant message"),
    ({"input": [{"role": "user", "content": "hi"}], "preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "'input' must be an object"),
])
def test_a_malformed_preference_file_is_rejected_on_upload_with_its_line(api, line, reason):
    content = preference_jsonl(3) + json.dumps(line).encode() + b"\n"
    response = api.upload(content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "file" and error["message"].startswith("Invalid file format for fine-tuning: line 4: ")
    assert reason in error["message"]
    mixed = api.upload(preference_jsonl(2) + chat_jsonl(1))
    assert "chat format, but the file started in preference format" in mixed.json()["error"]["message"]
    assert [f for f in api.get("/v1/files").json()["data"] if f["purpose"] == "fine-tune"] == []
