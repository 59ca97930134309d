"""The legacy fine-tunes flow as old guides teach it, with the real openai 0.28.1 CLI against a
real `whetstone serve` (SQLite, SQL broker, its embedded Celery worker):
`openai tools fine_tunes.prepare_data`, then `openai api fine_tunes.create -t data.jsonl -m BASE` follows the job to success and prints the
`completions.create -m …` line; list/get/results/cancel; the model answers in the trained style."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pytest

from tests.conftest import TINY
from tests.e2e.legacy_cli import run_cli
from tests.e2e.server import cli, server
from tests.e2e.test_whole_flow import legacy_examples
from tests.training.toy_data import HELD_OUT_QUESTIONS, PHRASE


def embedded_env(tmp_path, base_models_dir) -> dict[str, str]:
    env = {**os.environ, "WHETSTONE_DATA_DIR": str(tmp_path / "data"), "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir)}
    for name in ("WHETSTONE_DATABASE_URL", "WHETSTONE_BROKER_URL"):
        env.pop(name, None)
    return env


def follow_create(base_url: str, key: str, data, *args: str) -> tuple[str, str]:
    """`fine_tunes.create` following the job; returns (fine-tune id, fine-tuned model)."""
    out = run_cli(base_url, key, "api", "fine_tunes.create", "-t", str(data), *args)
    job_id = re.search(r"Created fine-tune: (\S+)", out).group(1)
    assert "Job complete! Status: succeeded" in out, out
    model = re.search(r"openai api completions\.create -m (\S+) -p <YOUR_PROMPT>", out).group(1)
    assert "[" in out and "The job has successfully completed" in out  # events streamed as "[time] message"
    return job_id, model


def test_legacy_cli_create_follow_list_get_results_cancel(tmp_path, base_models_dir):
    env = embedded_env(tmp_path, base_models_dir)
    key = cli(env, "keys", "create", "--project", "legacy")
    raw = tmp_path / "double.jsonl"
    raw.write_text("".join(json.dumps({"prompt": f"Double {i}", "completion": str(2 * i)}) + "\n" for i in range(10)))
    # The old guides start here: the CLI's own data preparation (offline), then its output is trained on.
    prepared = run_cli("http://unused", "unused", "tools", "fine_tunes.prepare_data", "-f", str(raw), "-q",
                       cwd=tmp_path)
    assert 'openai api fine_tunes.create -t "' in prepared, prepared
    data = tmp_path / "double_prepared.jsonl"
    assert json.loads(data.read_text().splitlines()[3]) == {"prompt": "Double 3 ->", "completion": " 6\n"}
    with server(env, tmp_path / "serve.log") as base_url:
        job_id, model = follow_create(base_url, key, data, "-m", TINY, "--suffix", "double", "--n_epochs", "2")
        assert re.fullmatch(rf"{TINY}:ft-legacy:double-\d{{4}}(-\d\d){{5}}", model), model

        got = json.loads(run_cli(base_url, key, "api", "fine_tunes.get", "-i", job_id))
        assert got["object"] == "fine-tune" and got["status"] == "succeeded" and got["fine_tuned_model"] == model
        assert got["hyperparams"]["n_epochs"] == 2 and got["hyperparams"]["prompt_loss_weight"] == 0.01
        assert got["training_files"][0]["filename"].endswith("double_prepared.jsonl")

        events = json.loads(run_cli(base_url, key, "api", "fine_tunes.events", "-i", job_id))["data"]
        assert events[0]["object"] == "fine-tune-event" and events[-1]["message"] == "The job has successfully completed"
        followed = run_cli(base_url, key, "api", "fine_tunes.follow", "-i", job_id)  # a finished job: replay, then [DONE]
        assert followed.count("] ") == len(events) and f"completions.create -m {model}" in followed

        results = list(csv.DictReader(io.StringIO(run_cli(base_url, key, "api", "fine_tunes.results", "-i", job_id))))
        assert results and {"step", "elapsed_tokens", "elapsed_examples", "training_loss",
                            "training_sequence_accuracy", "training_token_accuracy"} <= set(results[0])
        assert results[-1]["step"] == "20" and results[-1]["elapsed_examples"] == "20"

        # A second job, not followed, cancelled from the CLI.
        out = run_cli(base_url, key, "api", "fine_tunes.create", "-t", str(data), "-m", TINY, "--no_follow",
                      "--no_check_if_files_exist")
        assert out.startswith("Uploaded file from ")
        second = json.loads(out[out.index("{"):])
        cancelled = json.loads(run_cli(base_url, key, "api", "fine_tunes.cancel", "-i", second["id"]))
        assert cancelled["status"] == "cancelled"

        listed = json.loads(run_cli(base_url, key, "api", "fine_tunes.list"))
        assert {f["id"]: f["status"] for f in listed["data"]} == {job_id: "succeeded", second["id"]: "cancelled"}

        text = run_cli(base_url, key, "api", "completions.create", "-m", model, "-p", "Double 3 ->", "-M", "4")
        assert text  # the legacy model name is served (the tiny random model's words mean nothing)


@pytest.mark.slow
def test_legacy_cli_model_answers_in_the_trained_style(tmp_path, base_models_dir):
    base = "smollm2-135m-instruct"
    env = embedded_env(tmp_path, base_models_dir)
    key = cli(env, "keys", "create", "--project", "pirates")
    data = tmp_path / "pirate.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in legacy_examples(30)))
    with server(env, tmp_path / "serve.log") as base_url:
        _, model = follow_create(base_url, key, data, "-m", base, "--suffix", "pirate", "--n_epochs", "2")

        def complete(name: str, question: str) -> str:
            return run_cli(base_url, key, "api", "completions.create", "-m", name, "-p", f"Q: {question}\nA:",
                           "-M", "12", "-t", "0", "--stop", "\n")

        tuned = [complete(model, q) for q in HELD_OUT_QUESTIONS]
        untuned = [complete(base, q) for q in HELD_OUT_QUESTIONS]
        assert all(PHRASE in t for t in tuned), tuned
        assert not any(PHRASE in u for u in untuned), untuned
