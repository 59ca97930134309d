"""/metrics in Prometheus text format: the numbers move as a job is created, trains and finishes."""

from __future__ import annotations

import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from app.core.metrics import record_adapter_lookup, record_generation
from tests.conftest import TINY
from tests.data import chat_jsonl
from worker.tasks import run_job


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_a_job(api, client, settings):
    before = scrape(client)
    file_id = api.upload(chat_jsonl()).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id,
                                                  "hyperparameters": {"n_epochs": 3}}).json()
    created = scrape(client)
    assert value(created, "whetstone_jobs", status="validating_files") == \
        value(before, "whetstone_jobs", status="validating_files") + 1
    assert value(created, "whetstone_queue_depth") == value(before, "whetstone_queue_depth") + 1
    route = {"method": "POST", "route": "/v1/fine_tuning/jobs", "status": "200"}
    assert value(created, "whetstone_http_request_duration_seconds_count", **route) == \
        value(before, "whetstone_http_request_duration_seconds_count", **route) + 1

    worker = threading.Thread(target=run_job, args=(settings, job["id"]))
    worker.start()
    seen_speed = seen_running = 0.0
    while worker.is_alive():
        during = scrape(client)
        seen_running = max(seen_running, value(during, "whetstone_jobs", status="running"))
        seen_speed = max(seen_speed, value(during, "whetstone_training_tokens_per_second", job=job["id"]))
        time.sleep(0.2)
    worker.join()
    assert seen_running >= 1 and seen_speed > 0

    after = scrape(client)
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded"
    assert value(after, "whetstone_jobs", status="succeeded") == value(before, "whetstone_jobs", status="succeeded") + 1
    assert value(after, "whetstone_jobs", status="running") == value(before, "whetstone_jobs", status="running")
    assert ("whetstone_training_tokens_per_second", (("job", job["id"]),)) not in after  # only running jobs
    assert not [k for k in after if k[0].startswith("whetstone_gpu_")]  # no GPU on this machine


def test_inference_metrics_are_exported(client):
    before = scrape(client)
    record_generation("tiny-llama", prompt_tokens=7, completion_tokens=20, seconds=0.5)
    record_adapter_lookup(hit=False)
    record_adapter_lookup(hit=True)
    record_adapter_lookup(hit=True)
    after = scrape(client)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("whetstone_inference_tokens_total", base_model="tiny-llama", kind="completion") == 20
    assert delta("whetstone_inference_tokens_total", base_model="tiny-llama", kind="prompt") == 7
    assert delta("whetstone_inference_request_tokens_per_second_count", base_model="tiny-llama") == 1
    assert delta("whetstone_adapter_cache_lookups_total", result="hit") == 2
    assert delta("whetstone_adapter_cache_lookups_total", result="miss") == 1


def test_queue_depth_on_the_embedded_broker(tmp_path, base_models_dir):
    from fastapi.testclient import TestClient

    from app.cli import migrate_database
    from app.core.config import Settings
    from app.main import create_app
    from tests.conftest import Api, new_key

    embedded = Settings(data_dir=tmp_path / "data", base_models_dir=base_models_dir)  # SQLite + SQL broker
    embedded.ensure_dirs()
    migrate_database(embedded)
    with TestClient(create_app(embedded)) as client:
        api = Api(client, new_key(embedded))
        assert value(scrape(client), "whetstone_queue_depth") == 0
        file_id = api.upload(chat_jsonl()).json()["id"]
        for _ in range(2):
            assert api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id}).status_code == 200
        samples = scrape(client)
        assert value(samples, "whetstone_queue_depth") == 2
        assert value(samples, "whetstone_jobs", status="validating_files") == 2
