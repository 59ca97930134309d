"""SSE follow against a real `whetstone serve` process on Postgres + Redis: heartbeat comments
while nothing happens, events pushed live while the job trains, and an API restart in the
middle: the client reconnects with Last-Event-ID and gets every event exactly once."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import httpx

from app.core.config import Settings
from tests.conftest import REDIS_URL, TINY, new_key
from tests.data import chat_jsonl
from tests.e2e.server import server
from worker.tasks import run_job


def read_stream(lines, stop_after: int | None = None) -> tuple[list[int], list[str], bool]:
    """(event ids, comment lines, saw [DONE]) from an SSE line iterator, until [DONE] or `stop_after` events."""
    ids, comments, event_id = [], [], None
    for line in lines:
        if line.startswith(":"):
            comments.append(line)
        elif line.startswith("id: "):
            event_id = int(line.removeprefix("id: "))
        elif line == "data: [DONE]":
            return ids, comments, True
        elif line.startswith("data: "):
            json.loads(line.removeprefix("data: "))
            ids.append(event_id)
            if stop_after is not None and len(ids) >= stop_after:
                return ids, comments, False
    return ids, comments, False


def test_follow_survives_an_api_restart_with_no_gap_and_no_duplicate(tmp_path, base_models_dir, fresh_postgres_url):
    settings = Settings(data_dir=tmp_path / "data", database_url=fresh_postgres_url, broker_url=REDIS_URL,
                        queue=f"whetstone-live-{uuid.uuid4().hex[:8]}", base_models_dir=base_models_dir)
    settings.ensure_dirs()
    env = {**os.environ, "WHETSTONE_DATA_DIR": str(settings.data_dir), "WHETSTONE_DATABASE_URL": fresh_postgres_url,
           "WHETSTONE_BROKER_URL": REDIS_URL, "WHETSTONE_QUEUE": settings.queue,
           "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir), "WHETSTONE_EVENTS_HEARTBEAT": "0.5"}
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    timeout = httpx.Timeout(10, read=120)
    with server(env, tmp_path / "api1.log", "--no-worker") as base:
        file_id = httpx.post(f"{base}/files", headers=headers, files={"file": ("t.jsonl", chat_jsonl(20))},
                             data={"purpose": "fine-tune"}).json()["id"]
        job_id = httpx.post(f"{base}/fine_tuning/jobs", headers=headers,
                            json={"model": TINY, "training_file": file_id, "hyperparameters": {"n_epochs": 3}}).json()["id"]
        url = f"{base}/fine_tuning/jobs/{job_id}/events"
        with httpx.stream("GET", url, params={"stream": "true"}, headers=headers, timeout=timeout) as response:
            lines = response.iter_lines()
            first, comments, _ = read_stream(lines, stop_after=2)  # created, queue position
            # Nothing happens for a second: keep-alive comments; then the worker starts and events flow.
            started = time.monotonic()
            while time.monotonic() - started < 1.2:
                line = next(lines)
                if line.startswith(":"):
                    comments.append(line)
            worker = threading.Thread(target=run_job, args=(settings, job_id))
            worker.start()
            more, _, _ = read_stream(lines, stop_after=6)
    assert comments and all(c == ": keep-alive" for c in comments)
    # The API goes away mid-job and comes back (a new process); the client resumes from its last id.
    with server(env, tmp_path / "api2.log", "--no-worker") as base:
        url = f"{base}/fine_tuning/jobs/{job_id}/events"
        with httpx.stream("GET", url, params={"stream": "true"}, headers={**headers, "Last-Event-ID": str(more[-1])},
                          timeout=timeout) as response:
            rest, _, done = read_stream(response.iter_lines())
        worker.join(timeout=120)
        listed = httpx.get(f"{base}/fine_tuning/jobs/{job_id}/events", headers=headers, params={"limit": 1000}).json()
    assert done
    seen = first + more + rest
    assert len(seen) == len(set(seen)) and seen == sorted(seen)  # nothing twice, in order
    assert len(seen) == len(listed["data"])  # nothing missed
    assert listed["data"][0]["message"] == "The job has successfully completed"
