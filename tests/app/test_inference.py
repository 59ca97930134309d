"""/v1/completions, /v1/chat/completions and /v1/models with the tiny model (real weights, real
decoding loop; the words are random, so these tests check shapes, counts and controls)."""

from __future__ import annotations

import json

import openai.types
import openai.types.chat
import pytest

from tests.conftest import TINY
from tests.contract import assert_matches

CHAT = {"model": TINY, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8, "temperature": 0}


def sse_payloads(text: str) -> list[str]:
    frames = [f for f in text.split("\n\n") if f.strip()]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f.removeprefix("data: ") for f in frames]


def test_chat_completion_shape_and_usage(api):
    response = api.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, "CreateChatCompletionResponse")
    openai.types.chat.ChatCompletion.model_validate(body)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 3
    assert body["model"] == TINY and body["id"].startswith("chatcmpl-")


def test_greedy_is_deterministic_and_seed_repeats_sampling(api):
    first = api.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    assert api.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"] == first
    sampled = {**CHAT, "temperature": 1.5, "seed": 3, "max_tokens": 12}
    a = api.post("/v1/chat/completions", json=sampled).json()["choices"][0]["message"]["content"]
    assert api.post("/v1/chat/completions", json=sampled).json()["choices"][0]["message"]["content"] == a


def test_max_tokens_gives_length_finish(api):
    body = api.post("/v1/completions", json={"model": TINY, "prompt": "Once upon a time", "max_tokens": 5,
                                             "temperature": 0}).json()
    assert_matches(body, "CreateCompletionResponse")
    openai.types.Completion.model_validate(body)
    # The random tiny model almost never emits its end token in 5 steps; if it did, finish is "stop".
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_the_text(api):
    free = api.post("/v1/completions", json={"model": TINY, "prompt": "Once upon a time", "max_tokens": 12,
                                             "temperature": 0}).json()["choices"][0]["text"]
    stop = free[3:6]
    assert stop and stop in free
    cut = api.post("/v1/completions", json={"model": TINY, "prompt": "Once upon a time", "max_tokens": 12,
                                            "temperature": 0, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == free[: free.index(stop)] and cut["finish_reason"] == "stop"


def test_prompt_list_gives_one_choice_each(api):
    body = api.post("/v1/completions", json={"model": TINY, "prompt": ["a", "b"], "max_tokens": 3}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 6


def test_empty_prompt_starts_from_the_beginning_of_text(api):
    body = api.post("/v1/completions", json={"model": TINY, "prompt": "", "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == 1 and body["usage"]["completion_tokens"] == 2


def test_chat_stream_matches_the_non_streamed_answer(api):
    whole = api.post("/v1/chat/completions", json=CHAT).json()
    streamed = api.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                      "stream_options": {"include_usage": True}})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(streamed.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for chunk in chunks:
        assert_matches(chunk, "CreateChatCompletionStreamResponse")
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completion_stream(api):
    body = {"model": TINY, "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    whole = api.post("/v1/completions", json=body).json()["choices"][0]["text"]
    payloads = sse_payloads(api.post("/v1/completions", json={**body, "stream": True}).text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "no-such-model"}, 404, "model"),
        ("/v1/completions", {"model": "ft:tiny-llama:x::abcdefgh", "prompt": "x"}, 404, "model"),
        ("/v1/chat/completions", {**CHAT, "temperature": 3}, 400, "temperature"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ("/v1/completions", {"model": TINY, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": TINY}, 400, "prompt"),
    ],
)
def test_bad_inference_requests(api, path, body, status, param):
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param


def test_models_list_and_retrieve(api):
    listing = api.get("/v1/models").json()
    assert_matches(listing, "ListModelsResponse")
    openai.types.Model.model_validate(listing["data"][0])
    ids = [m["id"] for m in listing["data"]]
    assert TINY in ids and "smollm2-135m-instruct" in ids
    assert api.get(f"/v1/models/{TINY}").json()["id"] == TINY
    assert api.get("/v1/models/ft:nothing:here::x").status_code == 404
