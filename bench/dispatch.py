"""Queue dispatch: `POST /v1/fine_tuning/jobs` -> the worker starts the job (its first event, on the
Redis push channel), vs Celery's bare task round trip (bench/bare_celery.py: `send_task` -> the
task body starts and says so on Redis), on the same Redis broker and worker options, in one run.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/dispatch.py [--jobs 20]

Jobs are sent one at a time, GAP seconds apart (the worker forks a fresh process per task, as the
real one does). The training file is too small to train on, so each job ends right after its
validation starts: only the dispatch is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import redis

GAP = 5.0  # seconds between jobs: a fresh pool process is up again (Celery waits up to 4 s for one)

from common import REDIS, REPO, api_server, base_models_dir, fresh_database, load, percentile


class Heard(threading.Thread):
    """Every message on the Redis channels matching `pattern`, with the time it arrived."""

    def __init__(self, pattern: str) -> None:
        super().__init__(daemon=True)
        self.pubsub = redis.Redis.from_url(REDIS).pubsub()
        self.pubsub.psubscribe(pattern)
        self.messages: list[tuple[float, str, bytes]] = []

    def run(self) -> None:
        for message in self.pubsub.listen():
            if message["type"] == "pmessage":
                self.messages.append((time.perf_counter(), message["channel"].decode(), message["data"]))

    def first(self, match, timeout: float = 60) -> float:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, channel, data in list(self.messages):
                if match(channel, data):
                    return at
            time.sleep(0.002)
        raise TimeoutError("nothing heard")


def api_dispatch(jobs: int) -> list[float]:
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import FineTuningJob
    from tests.data import chat_jsonl

    heard = Heard("whetstone:events:*")
    heard.start()
    with base_models_dir() as models, fresh_database() as url, api_server(url, models, worker=True) as server:
        file_id = httpx.post(f"{server.base}/files", headers=server.headers, files={"file": ("t.jsonl", chat_jsonl(3))},
                             data={"purpose": "fine-tune"}).json()["id"]
        timings = []
        with httpx.Client(timeout=60) as client:
            for i in range(jobs + 1):
                started = time.perf_counter()
                job_id = client.post(f"{server.base}/fine_tuning/jobs", headers=server.headers,
                                     json={"model": "smollm2-135m-instruct", "training_file": file_id}).json()["id"]
                with session_scope(url) as session:
                    pk = session.scalar(select(FineTuningJob.pk).where(FineTuningJob.id == job_id))
                channel = f"whetstone:events:{pk}"
                at = heard.first(lambda c, d: c == channel and b"Validating training file" in d)
                if i:  # the first is a warm-up
                    timings.append(at - started)
                heard.first(lambda c, d: c == channel and json.loads(d)["final"])
                time.sleep(GAP)
        redis.Redis.from_url(REDIS).delete(server.queue)
    return timings


def bare_dispatch(jobs: int) -> list[float]:
    from bare_celery import app

    queue = f"bare-{uuid.uuid4().hex[:6]}"
    app.conf.task_default_queue = queue
    heard = Heard(f"bare:{queue}")
    heard.start()
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench"), "BARE_CELERY_QUEUE": queue}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bare_celery", "worker", "-Q", queue,
                               "--concurrency=1", "--pool=prefork", "--without-gossip", "--without-mingle",
                               "--loglevel=WARNING", "-n", f"{queue}@%h"], env=env, cwd=REPO / "bench")
    try:
        timings = []
        for i in range(jobs + 1):
            token = uuid.uuid4().hex
            started = time.perf_counter()
            app.send_task("bare.started", args=[token], queue=queue)
            at = heard.first(lambda c, d: d.startswith(token.encode()), timeout=120)
            if i:
                timings.append(at - started)
            time.sleep(GAP)
    finally:
        worker.terminate()
        worker.wait()
        redis.Redis.from_url(REDIS).delete(queue)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    print(f"before: {load()}", flush=True)
    bare = bare_dispatch(args.jobs)
    api = api_dispatch(args.jobs)
    for name, values in (("Celery bare task round trip", bare), ("job create -> worker starts", api)):
        print(f"{name:30s} n={len(values)}  p50 {percentile(values, 50) * 1000:7.1f} ms  "
              f"p99 {percentile(values, 99) * 1000:7.1f} ms", flush=True)
    print(f"ratio (API / bare Celery): p50 {percentile(api, 50) / percentile(bare, 50):.1f}x")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
