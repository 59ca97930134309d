"""WHETSTONE_INFERENCE_URL: the API forwards completions, chat (streaming too) and model
deletion to a real `whetstone inference` subprocess over the same database and data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.serving_helpers import register_fine_tune
from tests.conftest import REPO, TINY, Api, new_key
from tests.e2e.server import free_port


@pytest.fixture
def inference_url(settings):
    port = free_port()
    env = {**os.environ, "WHETSTONE_DATABASE_URL": settings.resolved_database_url,
           "WHETSTONE_DATA_DIR": str(settings.resolved_data_dir),
           "WHETSTONE_BASE_MODELS_DIR": str(settings.resolved_base_models_dir), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "app.cli", "inference", "--port", str(port)], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if child.poll() is not None or time.time() > deadline:
            child.kill()
            pytest.fail(f"inference process did not start: {child.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield url
    child.terminate()
    child.wait(timeout=20)


def test_api_proxies_to_the_inference_process(settings, inference_url, tiny_model_dir):
    project = f"p{uuid.uuid4().hex[:10]}"
    key = new_key(settings, project)
    model, adapter = register_fine_tune(settings, project, 1, tiny_model_dir)
    request = {"model": model, "prompt": "The quick brown fox", "max_tokens": 10, "temperature": 0}
    with TestClient(create_app(settings)) as local_client:
        local = Api(local_client, key).post("/v1/completions", json=request).json()
    with TestClient(create_app(settings.model_copy(update={"inference_url": inference_url}))) as client:
        api = Api(client, key)
        proxied = api.post("/v1/completions", json=request)
        assert proxied.status_code == 200, proxied.text
        assert proxied.json()["choices"] == local["choices"] and proxied.json()["usage"] == local["usage"]
        assert client.app.state.engine.loaded() == []  # the API process loaded no model

        streamed = api.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                                          "max_tokens": 6, "temperature": 0, "stream": True})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        frames = [f.removeprefix("data: ") for f in streamed.text.split("\n\n") if f.strip()]
        assert frames[-1] == "[DONE]"
        text = "".join(json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames[:-1])
        whole = api.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                                       "max_tokens": 6, "temperature": 0}).json()
        assert text == whole["choices"][0]["message"]["content"]

        missing = api.post("/v1/completions", json={**request, "model": "ft:nope:x::y"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert api.delete(f"/v1/models/{model}").json()["deleted"] is True
        assert not adapter.exists()
        assert api.post("/v1/completions", json=request).status_code == 404


def test_proxy_answers_503_when_the_inference_process_is_down(settings, api):
    with TestClient(create_app(settings.model_copy(update={"inference_url": f"http://127.0.0.1:{free_port()}"}))) as client:
        response = Api(client, api.headers["Authorization"][7:]).post(
            "/v1/completions", json={"model": TINY, "prompt": "x"})
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["error"]["code"] == "inference_unavailable"
