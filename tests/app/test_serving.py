"""Serving fine-tuned models: many adapters on one base in one batch, the LRU, delete, the queue
limit, a model still loading, disconnects, and the OpenAI knobs (n, logprobs, echo, penalties)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import httpx
import openai.types
import openai.types.chat
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from app.main import create_app
from app.services.inference import SamplingOptions
from app.services.models import ModelTarget
from tests.app.serving_helpers import reference_completion, register_fine_tune
from tests.conftest import TINY, Api, new_key
from tests.contract import assert_matches

PROMPT = "The quick brown fox"


def serve(settings, **overrides):
    return TestClient(create_app(settings.model_copy(update=overrides)))


@pytest.fixture
def project(settings):
    name = f"p{uuid.uuid4().hex[:10]}"
    return name, new_key(settings, name)


@pytest.fixture
def two_fine_tunes(settings, project, tiny_model_dir):
    name, _ = project
    return [register_fine_tune(settings, name, seed, tiny_model_dir) for seed in (1, 2)]


def _completion(client: httpx.AsyncClient | TestClient, key: str, model: str, max_tokens: int = 12, **extra):
    return client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, **extra})


def test_two_fine_tunes_and_the_base_answer_concurrently_without_cross_talk(settings, project, two_fine_tunes,
                                                                            tiny_model_dir):
    _, key = project
    models = [two_fine_tunes[0][0], two_fine_tunes[1][0], TINY, two_fine_tunes[0][0]]
    adapters = {two_fine_tunes[0][0]: two_fine_tunes[0][1], two_fine_tunes[1][0]: two_fine_tunes[1][1], TINY: None}
    expected = {m: reference_completion(tiny_model_dir, adapters[m], PROMPT, 40) for m in adapters}
    assert len(set(expected.values())) == 3, "the crafted adapters must behave differently"

    app = create_app(settings)

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await asyncio.gather(*(_completion(client, key, m, max_tokens=40) for m in models))

    responses = asyncio.run(run())
    for model, response in zip(models, responses):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == model
        assert body["choices"][0]["text"] == expected[model], model
    scheduler = app.state.engine.loaded()[0]
    assert scheduler.mixed_steps > 0 and scheduler.peak_rows >= 3  # they really shared forwards
    app.state.engine.close()


def test_adapter_cache_keeps_at_most_its_size_and_answers_stay_right(settings, project, two_fine_tunes,
                                                                     tiny_model_dir):
    _, key = project
    (a, a_dir), (b, b_dir) = two_fine_tunes
    expected = {a: reference_completion(tiny_model_dir, a_dir, PROMPT, 8),
                b: reference_completion(tiny_model_dir, b_dir, PROMPT, 8)}
    with serve(settings, inference_adapter_cache_size=1) as client:
        for model in (a, b, a, b):
            assert _completion(client, key, model, 8).json()["choices"][0]["text"] == expected[model]
            assert len(client.app.state.engine.loaded()[0].adapters) == 1


def test_deleting_a_fine_tune(settings, project, two_fine_tunes, client):
    name, key = project
    (model, adapter), (kept, _) = two_fine_tunes
    owner = Api(client, key)
    stranger = Api(client, new_key(settings))
    listed = {m["id"]: m["owned_by"] for m in owner.get("/v1/models").json()["data"]}
    assert listed[model] == name and listed[TINY] == "whetstone"
    assert owner.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2}).status_code == 200
    assert client.app.state.engine.loaded()[0].adapters  # loaded now

    denied = stranger.delete(f"/v1/models/{model}")
    assert denied.status_code == 404 and adapter.is_dir()
    assert_matches(denied.json(), "ErrorResponse")
    base = owner.delete(f"/v1/models/{TINY}")
    assert base.status_code == 403 and base.json()["error"]["param"] == "model"

    deleted = owner.delete(f"/v1/models/{model}")
    assert deleted.status_code == 200, deleted.text
    assert_matches(deleted.json(), "DeleteModelResponse")
    openai.types.ModelDeleted.model_validate(deleted.json())
    assert deleted.json() == {"id": model, "object": "model", "deleted": True}
    assert not adapter.exists()
    assert owner.get(f"/v1/models/{model}").status_code == 404
    assert model not in [m["id"] for m in owner.get("/v1/models").json()["data"]]
    gone = owner.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert owner.delete(f"/v1/models/{model}").status_code == 404
    assert owner.get(f"/v1/models/{kept}").status_code == 200
    deadline = time.time() + 5
    while client.app.state.engine.loaded()[0].adapters.get(adapter) and time.time() < deadline:
        time.sleep(0.05)
    assert adapter not in client.app.state.engine.loaded()[0].adapters  # unloaded from the cache


def test_beyond_the_queue_answers_429_with_retry_after(settings, api):
    with serve(settings, inference_max_batch_size=1, inference_max_queue=1) as client:
        engine = client.app.state.engine
        target = ModelTarget(TINY, TINY, None)
        long = SamplingOptions(max_tokens=1500, temperature=0)
        first = engine.generate_sync(target, [1, 2, 3], long)
        next(first)  # running: the one batch slot is taken
        second = engine.generate_sync(target, [1, 2, 3], long)
        threading.Thread(target=lambda: next(second, None), daemon=True).start()
        deadline = time.time() + 10
        while engine.loaded()[0].load()["waiting"] < 1 and time.time() < deadline:
            time.sleep(0.01)
        response = Api(client, api.headers["Authorization"][7:]).post(
            "/v1/completions", json={"model": TINY, "prompt": "x", "max_tokens": 2})
        assert response.status_code == 429, response.text
        assert_matches(response.json(), "ErrorResponse")
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert int(response.headers["retry-after"]) >= 1
        first.close()
        engine.close()  # fails what is still queued or running; the second caller's thread returns


def test_a_model_still_loading_answers_503_with_retry_after(settings, api):
    with serve(settings, inference_load_wait_seconds=0) as client:
        caller = Api(client, api.headers["Authorization"][7:])
        response = caller.post("/v1/completions", json={"model": TINY, "prompt": "x", "max_tokens": 2})
        assert response.status_code == 503, response.text
        assert_matches(response.json(), "ErrorResponse")
        assert "loading" in response.json()["error"]["message"] and response.headers["retry-after"]
        deadline = time.time() + 60
        while not client.app.state.engine.loaded() and time.time() < deadline:
            time.sleep(0.05)
        assert caller.post("/v1/completions", json={"model": TINY, "prompt": "x", "max_tokens": 2}).status_code == 200


def assert_generation_stopped(scheduler) -> None:
    """No row left in the batch, no further steps, and far fewer than the 1500 tokens asked for."""
    deadline = time.time() + 5
    while scheduler.load()["active"] and time.time() < deadline:
        time.sleep(0.01)
    steps = scheduler.steps
    time.sleep(0.3)
    assert scheduler.load()["active"] == 0 and scheduler.steps == steps and steps < 1400


def test_leaving_a_stream_early_stops_its_generation(settings):
    from app.services.inference import InferenceEngine

    engine = InferenceEngine(settings)
    target = ModelTarget(TINY, TINY, None)

    async def run():
        deltas = await engine.generate(target, [([1, 2, 3], SamplingOptions(max_tokens=1500, temperature=0))])
        await anext(deltas)
        await deltas.aclose()  # what Starlette does when the client disconnects mid-stream

    asyncio.run(run())
    scheduler = engine.loaded()[0]
    assert_generation_stopped(scheduler)
    engine.close()


def test_usage_counts_match_the_tokenizer(api, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    body = api.post("/v1/completions", json={"model": TINY, "prompt": PROMPT, "max_tokens": 7,
                                             "temperature": 0}).json()
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode(PROMPT, add_special_tokens=False))
    assert body["usage"]["completion_tokens"] == 7
    messages = [{"role": "user", "content": "Hi"}]
    chat = api.post("/v1/chat/completions", json={"model": TINY, "messages": messages, "max_completion_tokens": 5,
                                                  "temperature": 0}).json()
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat["usage"]["prompt_tokens"] == len(tokenizer.encode(templated, add_special_tokens=False))
    assert chat["usage"]["completion_tokens"] == 5 and chat["choices"][0]["finish_reason"] == "length"


def test_n_choices_seeded_and_counted(api):
    body = api.post("/v1/completions", json={"model": TINY, "prompt": ["a", "b"], "n": 3, "max_tokens": 4,
                                             "temperature": 1.2, "seed": 7}).json()
    assert_matches(body, "CreateCompletionResponse")
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert len({c["text"] for c in body["choices"][:3]}) > 1  # n samples differ
    assert body["usage"]["completion_tokens"] == 24 and body["usage"]["prompt_tokens"] == 2
    again = api.post("/v1/completions", json={"model": TINY, "prompt": ["a", "b"], "n": 3, "max_tokens": 4,
                                              "temperature": 1.2, "seed": 7}).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in body["choices"]]
    chat = api.post("/v1/chat/completions", json={"model": TINY, "messages": [{"role": "user", "content": "x"}],
                                                  "n": 2, "max_tokens": 3, "temperature": 1, "seed": 1}).json()
    openai.types.chat.ChatCompletion.model_validate(chat)
    assert [c["index"] for c in chat["choices"]] == [0, 1] and chat["usage"]["completion_tokens"] == 6


def test_completion_logprobs_and_echo(api):
    body = api.post("/v1/completions", json={"model": TINY, "prompt": PROMPT, "max_tokens": 5, "temperature": 0,
                                             "logprobs": 3}).json()
    assert_matches(body, "CreateCompletionResponse")
    openai.types.Completion.model_validate(body)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 5 and "".join(lp["tokens"]) == body["choices"][0]["text"]
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy takes the top one
    assert lp["text_offset"][0] == 0
    echoed = api.post("/v1/completions", json={"model": TINY, "prompt": PROMPT, "max_tokens": 5, "temperature": 0,
                                               "logprobs": 1, "echo": True}).json()["choices"][0]
    assert echoed["text"] == PROMPT + body["choices"][0]["text"]
    n_prompt = len(echoed["logprobs"]["tokens"]) - 5
    assert echoed["logprobs"]["token_logprobs"][0] is None and n_prompt == 4
    assert echoed["logprobs"]["token_logprobs"][n_prompt:] == pytest.approx(lp["token_logprobs"], abs=1e-4)


def test_chat_logprobs_and_stream_usage(api):
    req = {"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 4,
           "temperature": 0, "logprobs": True, "top_logprobs": 2}
    body = api.post("/v1/chat/completions", json=req).json()
    assert_matches(body, "CreateChatCompletionResponse")
    openai.types.chat.ChatCompletion.model_validate(body)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 and all(len(c["top_logprobs"]) == 2 for c in content)
    assert "".join(c["token"] for c in content) == body["choices"][0]["message"]["content"]
    bad = api.post("/v1/chat/completions", json={**req, "logprobs": False})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"
    stream = api.post("/v1/completions", json={"model": TINY, "prompt": "Hi", "max_tokens": 4, "temperature": 0,
                                               "stream": True, "stream_options": {"include_usage": True}})
    frames = [f.removeprefix("data: ") for f in stream.text.split("\n\n") if f.strip()]
    assert frames[-1] == "[DONE]"
    last = json.loads(frames[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4


def test_penalties_change_greedy_output(api):
    base = {"model": TINY, "prompt": "a a a a", "max_tokens": 24, "temperature": 0}
    plain = api.post("/v1/completions", json=base).json()["choices"][0]["text"]
    penalised = api.post("/v1/completions", json={**base, "frequency_penalty": 2.0,
                                                  "presence_penalty": 2.0}).json()["choices"][0]["text"]
    assert plain != penalised
    assert api.post("/v1/completions", json={**base, "presence_penalty": 3}).status_code == 400


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(settings, api, stream):
    """Drive the ASGI app directly: the client sends its request, then goes away (after the first
    streamed chunk, or while waiting for a whole answer)."""
    app = create_app(settings)
    body = json.dumps({"model": TINY, "prompt": "x", "max_tokens": 1500, "temperature": 0, "stream": stream}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "server": ("t", 80), "client": ("c", 1),
             "headers": [(b"content-type", b"application/json"), (b"authorization", api.headers["Authorization"].encode())]}

    async def run():
        gone = asyncio.Event()
        requested = False

        async def receive():
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            if stream:
                await gone.wait()
            else:  # wait until generation is under way, then leave
                while not (app.state.engine.loaded() and app.state.engine.loaded()[0].steps > 5):
                    await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                gone.set()

        await asyncio.wait_for(app(scope, receive, send), 60)

    asyncio.run(run())
    scheduler = app.state.engine.loaded()[0]
    assert_generation_stopped(scheduler)
    app.state.engine.close()


def _scrape(client: TestClient, name: str, **labels: str) -> float:
    """One sample of a Prometheus metric from /metrics (0 when the series does not exist yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_inference_tokens_and_adapter_cache_hits(settings, project, two_fine_tunes):
    _, key = project
    (model, _), _ = two_fine_tunes
    with serve(settings) as client:
        before = {kind: _scrape(client, "whetstone_inference_tokens_total", base_model=TINY, kind=kind)
                  for kind in ("prompt", "completion")}
        misses = _scrape(client, "whetstone_adapter_cache_lookups_total", result="miss")
        hits = _scrape(client, "whetstone_adapter_cache_lookups_total", result="hit")
        usage = [_completion(client, key, m, 6).json()["usage"] for m in (model, model, TINY)]
        after = {kind: _scrape(client, "whetstone_inference_tokens_total", base_model=TINY, kind=kind)
                 for kind in ("prompt", "completion")}
        assert after["prompt"] - before["prompt"] == sum(u["prompt_tokens"] for u in usage)
        assert after["completion"] - before["completion"] == sum(u["completion_tokens"] for u in usage)
        # The first request for the fine-tune loads its adapter (a miss), the second finds it (a hit).
        assert _scrape(client, "whetstone_adapter_cache_lookups_total", result="miss") == misses + 1
        assert _scrape(client, "whetstone_adapter_cache_lookups_total", result="hit") == hits + 1
        client.app.state.engine.close()
