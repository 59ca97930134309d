"""Job creation under load: `POST /v1/fine_tuning/jobs` from 50 concurrent clients against the real
API (one `whetstone serve` process, Postgres, Redis broker with no worker), vs a bare FastAPI
endpoint doing the same database insert (bench/bare_insert_app.py, uvicorn, same database) in the
same run; prints p50/p99 of each and the overhead ratio.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/create_job.py [--clients 50] [--requests 1000]

The client is httpx.AsyncClient (one connection per client). The API's create also authenticates,
validates the body and the training file, writes the queue-position event, sends the job id to
Redis after the commit and records when: that is the overhead measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx
import redis

from common import REDIS, REPO, api_server, base_models_dir, fresh_database, load, percentile


async def hammer(url: str, headers: dict, body: dict, clients: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    per_client = requests // clients

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as http:
            for _ in range(per_client):
                started = time.perf_counter()
                response = await http.post(url, json=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


def bare_server(url: str, project_pk: int, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BARE_DATABASE_URL": url, "BARE_PROJECT_PK": str(project_pk)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.bare_insert_app:app", "--port", str(port),
                             "--log-level", "warning"], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(f"http://127.0.0.1:{port}/jobs", json={"model": "m", "training_file": "f"}, timeout=2)
            return proc
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "the bare app did not start"
            time.sleep(0.3)


def show(name: str, latencies: list[float], wall: float) -> tuple[float, float]:
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(f"{name:28s} n={len(latencies)}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  {len(latencies) / wall:6.0f} req/s",
          flush=True)
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import ApiKey
    from tests.data import chat_jsonl
    from tests.e2e.server import free_port

    print(f"before: {load()}", flush=True)
    # Every create stays queued (no worker) in one project, the bare inserts too: a limit above what the run
    # creates keeps the waiting-jobs quota check (a count, part of the measured cost) from refusing them.
    quota = {"max_queued_jobs_per_project": str(10 * (args.requests + 100))}
    with base_models_dir() as models, fresh_database() as url, api_server(url, models, **quota) as server:
        file_id = httpx.post(f"{server.base}/files", headers=server.headers, files={"file": ("t.jsonl", chat_jsonl())},
                             data={"purpose": "fine-tune"}).json()["id"]
        body = {"model": "smollm2-135m-instruct", "training_file": file_id}
        with session_scope(url) as session:
            project_pk = session.scalar(select(ApiKey.project_pk))
        port = free_port()
        bare = bare_server(url, project_pk, port)
        try:
            results = {}
            for name, target, headers in (("bare FastAPI insert", f"http://127.0.0.1:{port}/jobs", {}),
                                          ("POST /v1/fine_tuning/jobs", f"{server.base}/fine_tuning/jobs",
                                           server.headers)):
                asyncio.run(hammer(target, headers, body, 10, 50))  # warm up
                latencies, wall = asyncio.run(hammer(target, headers, body, args.clients, args.requests))
                results[name] = show(name, latencies, wall)
        finally:
            bare.terminate()
            bare.wait()
            redis.Redis.from_url(REDIS).delete(server.queue)  # the job ids no worker took
    (b50, b99), (a50, a99) = results["bare FastAPI insert"], results["POST /v1/fine_tuning/jobs"]
    print(f"overhead ratio (API / bare): p50 {a50 / b50:.2f}x, p99 {a99 / b99:.2f}x  ({args.clients} clients)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
