"""Webhooks: one signed delivery per terminal job status to a real receiver that verifies it
with the standardwebhooks library; retries with backoff, every attempt recorded and listable;
a slow endpoint delays neither jobs nor API requests."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from tests.app.webhook_receiver import receiver
from tests.conftest import TINY, Api, new_key
from tests.data import chat_jsonl
from tests.e2e.server import free_port
from worker.tasks import run_job


@pytest.fixture
def fast_settings(settings):
    return settings.model_copy(update={"webhook_poll_interval": 0.1, "webhook_backoff_seconds": 0.5,
                                       "webhook_max_attempts": 3})


@pytest.fixture
def hooks_api(fast_settings):
    from app.main import create_app

    with TestClient(create_app(fast_settings)) as client:
        yield Api(client, new_key(fast_settings))


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def create_job(api: Api, content: bytes) -> str:
    training = api.upload(content).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training,
                                                      "hyperparameters": {"n_epochs": 1}})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def register(api: Api, url: str) -> dict:
    endpoint = api.post("/v1/webhooks", json={"url": url}).json()
    assert endpoint["secret"].startswith("whsec_")
    return endpoint


def test_one_signed_delivery_per_terminal_status(hooks_api, fast_settings):
    api = hooks_api
    with receiver() as (url, got):
        endpoint = register(api, url)
        got.secret = endpoint["secret"]
        succeeded, failed, cancelled = create_job(api, chat_jsonl(12)), create_job(api, chat_jsonl(5)), \
            create_job(api, chat_jsonl(12))
        api.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel")
        run_job(fast_settings, failed)
        run_job(fast_settings, succeeded)
        wait_for(lambda: len(got.verified) >= 3)
        time.sleep(1.0)  # ten more sender rounds: nothing is sent twice
        assert got.rejected == []
        events = {p["data"]["id"]: p for p, _ in got.verified}
        assert len(got.verified) == 3 and len(events) == 3
        assert {job: e["type"] for job, e in events.items()} == {
            succeeded: "fine_tuning.job.succeeded", failed: "fine_tuning.job.failed",
            cancelled: "fine_tuning.job.cancelled"}
        for payload, headers in got.verified:
            assert payload["object"] == "event" and headers["webhook-id"] == payload["id"]
            assert payload["id"].startswith("evt-")
        # A different secret does not verify: the signature really binds the body.
        from standardwebhooks import Webhook
        from standardwebhooks.webhooks import WebhookVerificationError

        payload, headers = got.verified[0]
        import json

        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 43 + "=").verify(json.dumps(payload), headers)

        deliveries = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
        assert sorted(d["fine_tuning_job_id"] for d in deliveries) == sorted(events)
        assert all(d["status"] == "delivered" and len(d["attempts"]) == 1 and d["attempts"][0]["status_code"] == 204
                   for d in deliveries)
        assert api.get("/v1/webhooks").json()["data"][0]["secret"] is None  # shown once


def test_failed_attempts_are_retried_with_the_same_id_and_recorded(hooks_api):
    api = hooks_api
    with receiver() as (url, got):
        endpoint = register(api, url)
        got.secret = endpoint["secret"]
        got.answers = [500, 503]  # then 204
        job = create_job(api, chat_jsonl(12))
        api.post(f"/v1/fine_tuning/jobs/{job}/cancel")
        wait_for(lambda: len(got.verified) >= 3)
        time.sleep(0.5)
        assert len(got.verified) == 3 and len({h["webhook-id"] for _, h in got.verified}) == 1
        [delivery] = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
        assert delivery["status"] == "delivered"
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 204]
        assert delivery["attempts"][0]["error"].startswith("HTTP 500")


def test_a_receiver_that_is_down_gets_retries_with_backoff(hooks_api):
    api = hooks_api
    endpoint = register(api, f"http://127.0.0.1:{free_port()}/down")
    job = create_job(api, chat_jsonl(12))
    api.post(f"/v1/fine_tuning/jobs/{job}/cancel")

    def delivery() -> dict:
        data = api.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
        return data[0] if data else {"status": "none"}

    started = time.monotonic()
    wait_for(lambda: delivery()["status"] == "failed")
    elapsed = time.monotonic() - started
    attempts = delivery()["attempts"]
    assert len(attempts) == 3 and all(a["status_code"] is None and "Connect" in a["error"] for a in attempts)
    assert elapsed >= 0.5 + 1.0  # backoff 0.5 s, then 1 s


def test_a_slow_receiver_delays_neither_requests_nor_jobs_nor_other_endpoints(hooks_api, fast_settings):
    api = hooks_api
    with receiver() as (url, slow), receiver() as (fast_url, fast):
        slow.secret = register(api, url)["secret"]
        fast.secret = register(api, fast_url)["secret"]
        slow.delay = 3.0
        first = create_job(api, chat_jsonl(12))
        api.post(f"/v1/fine_tuning/jobs/{first}/cancel")
        wait_for(lambda: slow.arrived == 1)  # a sender thread is now inside the slow request
        wait_for(lambda: len(fast.verified) == 1, timeout=1.5)  # the other endpoint is not held up
        second = create_job(api, chat_jsonl(5))
        started = time.monotonic()
        assert api.post(f"/v1/fine_tuning/jobs/{second}/cancel").json()["status"] == "cancelled"
        third = create_job(api, chat_jsonl(5))
        run_job(fast_settings, third)
        assert time.monotonic() - started < 2.0  # API call and job run did not wait for the receiver
        assert api.get(f"/v1/fine_tuning/jobs/{third}").json()["status"] == "failed"
        assert slow.verified == []  # still sleeping on the first
        wait_for(lambda: len(slow.verified) == 3 and len(fast.verified) == 3, timeout=20)


def test_webhooks_cli(settings, tmp_path):
    env = {**os.environ, "WHETSTONE_DATABASE_URL": settings.resolved_database_url,
           "WHETSTONE_DATA_DIR": str(tmp_path / "data")}
    project = f"hooks{os.getpid()}"
    new_key(settings, project)

    def whetstone(*args: str, ok: bool = True) -> str:
        result = subprocess.run([sys.executable, "-m", "app.cli", "webhooks", *args], env=env, capture_output=True,
                                text=True, timeout=120)
        assert (result.returncode == 0) == ok, result.stderr
        return result.stdout if ok else result.stderr

    endpoint_id, secret = whetstone("create", "--project", project, "--url", "http://127.0.0.1:9/x").split()
    assert endpoint_id.startswith("whep-") and secret.startswith("whsec_")
    assert whetstone("list", "--project", project).split() == [endpoint_id, "http://127.0.0.1:9/x"]
    assert whetstone("deliveries", "--project", project, endpoint_id) == ""
    assert "not an http(s) URL" in whetstone("create", "--project", project, "--url", "ftp://x", ok=False)
    assert "No such webhook endpoint" in whetstone("delete", "--project", project, "whep-nope", ok=False)
    assert whetstone("delete", "--project", project, endpoint_id).strip() == f"deleted {endpoint_id}"
    assert whetstone("list", "--project", project) == ""
