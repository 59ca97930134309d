"""Worker emit -> SSE client latency with many concurrent followers.

Starts a real `whetstone serve --no-worker` on a fresh Postgres database and the local Redis,
opens N followers of one job's event stream, then writes events the way the worker does (a
committed row, published after the commit) and measures, for every (event, follower), the time
from just before the write to the follower reading the event's `data:` line.

Runs twice in one go: with the Redis push (the default) and with polling only (the baseline,
`WHETSTONE_EVENTS_REDIS_URL=none`), and prints p50/p99 for each and their ratio.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/events.py --followers 200 --events 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli import migrate_database  # noqa: E402
from app.core.config import Settings  # noqa: E402
from app.core.db import session_scope  # noqa: E402
from app.models import FineTuningJob  # noqa: E402
from app.services.event_bus import configure_publisher  # noqa: E402
from app.services.events import add_event  # noqa: E402
from tests.conftest import new_key  # noqa: E402
from tests.e2e.server import server  # noqa: E402

POSTGRES_ADMIN = os.environ.get("WHETSTONE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("WHETSTONE_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def follower(base: str, path: str, key: str, received: dict[int, float], ready: asyncio.Event,
                   n_ready: list[int], total: int) -> None:
    """A minimal SSE client on a raw socket (httpx costs more CPU than the server side we measure)."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    writer.write(f"GET {path}?stream=true HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    seen = 0
    try:
        while line := await reader.readline():
            if not line.startswith(b"data: {"):
                continue
            now = time.perf_counter()
            seen += 1
            if seen == 1:
                n_ready[0] += 1
                if n_ready[0] == total:
                    ready.set()
                continue
            event = json.loads(line[6:])
            if event["message"].startswith("bench "):
                received[int(event["message"].split()[1])] = now
                if event["message"].endswith("last"):
                    return
    finally:
        writer.close()


def emit(settings: Settings, job_pk: int, i: int, last: bool) -> float:
    started = time.perf_counter()
    with session_scope(settings.resolved_database_url) as session:
        add_event(session, job_pk, f"bench {i}" + (" last" if last else ""))
    return started


async def measure(base: str, settings: Settings, key: str, job_id: str, job_pk: int, n: int, events: int,
                  gap: float) -> list[float]:
    path = "/v1" + f"{base}/fine_tuning/jobs/{job_id}/events".split("/v1", 1)[1]
    ready, n_ready = asyncio.Event(), [0]
    received: list[dict[int, float]] = [{} for _ in range(n)]
    tasks = [asyncio.create_task(follower(base, path, key, received[k], ready, n_ready, n)) for k in range(n)]
    await asyncio.wait_for(ready.wait(), 120)
    await asyncio.sleep(1.0)
    sent = []
    for i in range(events):
        sent.append(await asyncio.to_thread(emit, settings, job_pk, i, i == events - 1))
        await asyncio.sleep(gap)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    missed = sum(1 for r in received for i in range(events) if i not in r)
    if missed:  # a stream that ended early or skipped: say so rather than fail on it
        print(f"  {missed} of {n * events} (follower, event) pairs never arrived; "
              f"{sum(1 for r in received if len(r) < events)} followers affected", flush=True)
    return [(r[i] - sent[i]) * 1000 for r in received for i in range(events) if i in r]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run(mode: str, args: argparse.Namespace, base_models_dir: Path) -> list[float]:
    name = f"whetstone_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            redis_events = REDIS if mode == "push" else "none"
            settings = Settings(data_dir=Path(tmp), database_url=url, broker_url=REDIS,
                                queue=f"bench-{uuid.uuid4().hex[:6]}", events_redis_url=redis_events,
                                base_models_dir=base_models_dir)
            migrate_database(settings)
            configure_publisher(settings)
            key = new_key(settings)
            env = {**os.environ, "WHETSTONE_DATA_DIR": tmp, "WHETSTONE_DATABASE_URL": url, "WHETSTONE_BROKER_URL": REDIS,
                   "WHETSTONE_QUEUE": settings.queue, "WHETSTONE_EVENTS_REDIS_URL": redis_events,
                   "WHETSTONE_BASE_MODELS_DIR": str(base_models_dir),
                   # Every follower uses one key here; the per-key caps (issue 16) are not what is measured.
                   "WHETSTONE_MAX_STREAMS_PER_KEY": "0", "WHETSTONE_RATE_LIMIT_REQUESTS_PER_MINUTE": "0"}
            with server(env, Path(tmp) / "api.log", "--no-worker") as base:
                data = "\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                          {"role": "assistant", "content": f"a{i}"}]})
                                 for i in range(10)).encode()
                h = {"Authorization": f"Bearer {key}"}
                file_id = httpx.post(f"{base}/files", headers=h, files={"file": ("t.jsonl", data)},
                                     data={"purpose": "fine-tune"}).json()["id"]
                models = httpx.get(f"{base}/models", headers=h).json()["data"]
                job_id = httpx.post(f"{base}/fine_tuning/jobs", headers=h,
                                    json={"model": models[0]["id"], "training_file": file_id}).json()["id"]
                with session_scope(url) as session:
                    job_pk = session.scalar(select(FineTuningJob.pk).where(FineTuningJob.id == job_id))
                try:
                    return asyncio.run(measure(base, settings, key, job_id, job_pk, args.followers, args.events,
                                               args.gap))
                finally:
                    errors = [line for line in (Path(tmp) / "api.log").read_text().splitlines()
                              if "Error" in line or "error" in line]
                    if errors:
                        print("  server log:", *errors[-5:], sep="\n    ", flush=True)
    finally:
        from app.core.db import engine_for

        engine_for(url).dispose()
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=200)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between emitted events")
    parser.add_argument("--base-models-dir", type=Path, required=True,
                        help="a folder with at least one base model (any will do; nothing is trained)")
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    results = {}
    for mode in ("push", "poll"):
        latencies = run(mode, args, args.base_models_dir)
        results[mode] = (percentile(latencies, 50), percentile(latencies, 99), statistics.mean(latencies))
        print(f"{mode}: {args.followers} followers x {args.events} events: p50 {results[mode][0]:.1f} ms, "
              f"p99 {results[mode][1]:.1f} ms, mean {results[mode][2]:.1f} ms", flush=True)
    print(f"poll/push p50 ratio {results['poll'][0] / results['push'][0]:.1f}x, "
          f"p99 ratio {results['poll'][1] / results['push'][1]:.1f}x")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
