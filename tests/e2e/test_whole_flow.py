"""The whole flow through the real API, a real Celery worker process and the real SmolLM2:
upload -> fine-tuning job -> live events -> completions that show what the data taught.

Run twice: the embedded default (SQLite, SQL broker, worker started by `whetstone serve`) and
production-like (Postgres + Redis on this machine, a separately started `whetstone worker`)."""

from __future__ import annotations

import json
import os
import time
import uuid

import httpx
import pytest
from openai import OpenAI

from tests.contract import assert_matches
from tests.e2e.server import cli, process, server
from tests.training.toy_data import HELD_OUT_QUESTIONS, PHRASE, pirate_chat_examples, prompt_messages

pytestmark = pytest.mark.slow
BASE = "smollm2-135m-instruct"


def follow_sse(base_url: str, key: str, job_id: str) -> list[tuple[int, dict]]:
    """Follow the job's event stream to [DONE]; return (id, event) pairs."""
    seen, done = [], False
    url = f"{base_url}/fine_tuning/jobs/{job_id}/events"
    with httpx.stream("GET", url, params={"stream": "true"}, headers={"Authorization": f"Bearer {key}"},
                      timeout=httpx.Timeout(10, read=600)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event_id = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line.removeprefix("id: "))
            elif line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                seen.append((event_id, json.loads(line.removeprefix("data: "))))
    assert done
    return seen


def answers(client: OpenAI, model: str) -> list[str]:
    return [client.chat.completions.create(model=model, messages=prompt_messages(q),
                                           max_tokens=24, temperature=0).choices[0].message.content
            for q in HELD_OUT_QUESTIONS]


def test_embedded_default(tmp_path, base_models_dir):
    env = {**os.environ, "WHETSTONE_DATA_DIR": str(tmp_path / "data"), "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir)}
    for name in ("WHETSTONE_DATABASE_URL", "WHETSTONE_BROKER_URL"):
        env.pop(name, None)
    key = cli(env, "keys", "create", "--project", "demo")
    with server(env, tmp_path / "serve.log") as base_url:
        client = OpenAI(api_key=key, base_url=base_url)
        started = time.monotonic()
        data = "".join(json.dumps(e) + "\n" for e in pirate_chat_examples(30)).encode()
        training = client.files.create(file=("pirate.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=training.id, model=BASE, suffix="pirate")
        assert job.status == "validating_files"

        events = follow_sse(base_url, key, job.id)
        ids = [i for i, _ in events]
        assert ids == sorted(set(ids)), "each event once, in order"
        for _, event in events:
            assert_matches(event, "FineTuningJobEvent")
        messages = [e["message"] for _, e in events]
        assert messages[0] == f"Created fine-tuning job: {job.id}" and "Fine-tuning job started" in messages
        assert messages[-1] == "The job has successfully completed", messages
        losses = [e["data"]["train_loss"] for _, e in events if e["type"] == "metrics"]
        assert len(losses) >= 5 and min(losses[-3:]) < losses[0]

        done = client.fine_tuning.jobs.retrieve(job.id)
        wall = time.monotonic() - started
        assert done.status == "succeeded" and done.fine_tuned_model.startswith(f"ft:{BASE}:demo:pirate:")
        assert done.fine_tuned_model in [m.id for m in client.models.list().data]
        # Listing with the SDK (newest first) agrees with the stream.
        listed = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
        assert listed == messages[::-1]

        tuned, base = answers(client, done.fine_tuned_model), answers(client, BASE)
        assert all(a.startswith(PHRASE) for a in tuned), tuned
        assert not any(a.startswith(PHRASE) for a in base), base

        request = dict(model=done.fine_tuned_model, max_tokens=12, temperature=0,
                       messages=[{"role": "user", "content": HELD_OUT_QUESTIONS[0]}])
        whole = client.chat.completions.create(**request).choices[0].message.content
        stream = client.chat.completions.create(**request, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole
        completion = client.completions.create(model=done.fine_tuned_model, prompt="The sea is", max_tokens=8)
        assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens > 0
        tokens_per_second = [e["data"]["tokens_per_second"] for _, e in events if e["type"] == "metrics"]
        print(f"\nembedded flow: {wall:.1f} s wall, trained_tokens={done.trained_tokens}, "
              f"median train tokens/s={sorted(tokens_per_second)[len(tokens_per_second) // 2]:.0f}")


def legacy_examples(n: int) -> list[dict]:
    """The same question -> answer habit in the legacy format (the chat examples' last two turns)."""
    return [{"prompt": f"Q: {e['messages'][-2]['content']}\nA:", "completion": " " + e["messages"][-1]["content"] + "\n"}
            for e in pirate_chat_examples(n)]


def test_postgres_redis_and_a_separate_worker(tmp_path, base_models_dir, fresh_postgres_url, redis_queue):
    env = {**os.environ, "WHETSTONE_DATA_DIR": str(tmp_path / "data"), "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir),
           "WHETSTONE_DATABASE_URL": fresh_postgres_url, "WHETSTONE_BROKER_URL": "redis://127.0.0.1:6379/0",
           "WHETSTONE_QUEUE": f"{redis_queue}-e2e"}
    key = cli(env, "keys", "create", "--project", f"acme{uuid.uuid4().hex[:6]}")
    with server(env, tmp_path / "serve.log", "--no-worker") as base_url, \
            process(env, ["worker"], tmp_path / "worker.log"):
        client = OpenAI(api_key=key, base_url=base_url)
        started = time.monotonic()
        data = "".join(json.dumps(e) + "\n" for e in legacy_examples(30)).encode()
        training = client.files.create(file=("pirate.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=training.id, model=BASE)
        seen: dict[str, str] = {}
        while (current := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            for event in client.fine_tuning.jobs.list_events(job.id, limit=50).data:
                seen[event.id] = event.message
            assert time.monotonic() - started < 900, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert current.status == "succeeded", (current.error, (tmp_path / "worker.log").read_text()[-3000:])
        assert current.fine_tuned_model.endswith(":" + job.id.removeprefix("ftjob-")[:8])
        assert "::" in current.fine_tuned_model  # no suffix: the slot stays empty
        assert any(m.startswith("Step ") for m in seen.values()), "metrics were visible while it ran"
        wall = time.monotonic() - started

        def complete(model: str, question: str) -> str:
            return client.completions.create(model=model, prompt=f"Q: {question}\nA:", max_tokens=16,
                                             temperature=0, stop=["\n"]).choices[0].text

        tuned = [complete(current.fine_tuned_model, q) for q in HELD_OUT_QUESTIONS]
        base = [complete(BASE, q) for q in HELD_OUT_QUESTIONS]
        assert all(t.strip().startswith(PHRASE) for t in tuned), tuned
        assert not any(b.strip().startswith(PHRASE) for b in base), base
        chat = client.chat.completions.create(model=current.fine_tuned_model, max_tokens=8,
                                              messages=[{"role": "user", "content": "Hi"}])
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0
        print(f"\npostgres+redis flow: {wall:.1f} s wall, trained_tokens={current.trained_tokens}")
