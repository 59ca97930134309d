"""Listing at scale: 100,000 jobs and 1,000,000 events across 100 projects in Postgres, listed page
by page with `after` through the real API (one `whetstone serve` process), in one run against:
- the same SQL statements run straight on Postgres (what the database alone costs),
- `GET /healthz` on the same server (what one HTTP round trip costs).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/listing.py                 # fresh database, dropped after
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/listing.py --database whetstone_bench_listing  # kept, reused

Data: 100 projects x 1,000 jobs (created over a month, mostly finished); each job has 5 events,
except one long job per project with 5,005 (a training run's metrics), events of concurrent jobs
interleaved in insertion order as they would be. Loaded with COPY, then ANALYZE.
Measured: for 10 projects, 50 pages of `GET /v1/fine_tuning/jobs?limit=20&after=...`, and for
their long jobs 50 pages of `GET .../events?limit=20&after=...` (newest first, deep into the job).
Goal: p99 < 20 ms for both.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time

import httpx
import psycopg
from sqlalchemy import event as sa_event

from common import REDIS, api_server, base_models_dir, fresh_database, load, percentile, psycopg_url

PROJECTS, JOBS_PER_PROJECT, EVENTS_PER_JOB, LONG_JOB_EVENTS = 100, 1_000, 5, 5_005  # 1,000,000 events
_ALPHABET = string.ascii_letters + string.digits


def _ids(rng: random.Random, prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{''.join(rng.choices(_ALPHABET, k=24))}" for _ in range(n)]


def _copy(conn: psycopg.Connection, table: str, columns: list[str], rows) -> None:  # noqa: ANN001
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def populate(db_url: str) -> None:
    """Projects, jobs and events with COPY (skipped when the database already holds them)."""
    from app.core.auth import hash_key

    rng = random.Random(11)
    with psycopg.connect(db_url) as conn:
        events = PROJECTS * ((JOBS_PER_PROJECT - 1) * EVENTS_PER_JOB + LONG_JOB_EVENTS)
        if conn.execute("SELECT count(*) FROM job_events").fetchone()[0] == events:
            return
        conn.execute("TRUNCATE projects, api_keys, fine_tuning_jobs, job_events CASCADE")
        started = time.perf_counter()
        t0 = int(time.time()) - 30 * 86400
        _copy(conn, "projects", ["id", "name", "created_at"],
              ((f"proj-bench{p:03d}", f"bench-{p:03d}", t0) for p in range(PROJECTS)))
        project_pks = [r[0] for r in conn.execute("SELECT pk FROM projects WHERE name LIKE 'bench-%' ORDER BY pk")]
        _copy(conn, "api_keys", ["id", "project_pk", "key_hash", "display_prefix", "created_at"],
              ((f"key-bench{i:03d}", pk, hash_key(f"sk-whet-bench{i:03d}"), "sk-whet-benc", t0)
               for i, pk in enumerate(project_pks)))
        hyper = json.dumps({"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0})
        job_ids = _ids(rng, "ftjob", PROJECTS * JOBS_PER_PROJECT)
        order = [(j % PROJECTS, j) for j in range(PROJECTS * JOBS_PER_PROJECT)]  # projects' jobs interleaved
        statuses = ["succeeded"] * 8 + ["failed", "cancelled"]

        def jobs():
            for i, (p, j) in enumerate(order):
                created = t0 + i * 25
                status = "running" if j >= PROJECTS * (JOBS_PER_PROJECT - 1) else rng.choice(statuses)
                yield (job_ids[j], project_pks[p], "smollm2-135m-instruct", f"file-bench{p:03d}", rng.randrange(2**31),
                       hyper, status, "[]", created, created + 5, None if status == "running" else created + 600)

        _copy(conn, "fine_tuning_jobs", ["id", "project_pk", "model", "training_file", "seed", "hyperparameters",
                                         "status", "result_files", "created_at", "started_at", "finished_at"], jobs())
        job_pks = [r[0] for r in conn.execute("SELECT pk FROM fine_tuning_jobs ORDER BY pk")]
        long_jobs = job_pks[-PROJECTS:]  # each project's newest job is the long, running one
        short_jobs = job_pks[:-PROJECTS]
        data = json.dumps({"step": 1, "train_loss": 1.234, "tokens_per_second": 180.0})
        event_ids = iter(_ids(rng, "ftevent", len(short_jobs) * EVENTS_PER_JOB + PROJECTS * LONG_JOB_EVENTS))

        def events():
            for pk in short_jobs:
                for k in range(EVENTS_PER_JOB):
                    yield next(event_ids), pk, t0, "info", "message", f"Step {k}", None
            for step in range(LONG_JOB_EVENTS):  # the long jobs run at the same time: their events interleave
                for pk in long_jobs:
                    yield next(event_ids), pk, t0 + step, "info", "metrics", f"Step {step}/5000", data

        _copy(conn, "job_events", ["id", "job_pk", "created_at", "level", "type", "message", "data"], events())
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)


def walk(client: httpx.Client, first_url: str, pages: int, key: str) -> list[float]:
    """`pages` pages, each asked with `after` = the last id of the page before; seconds per request."""
    timings, after = [], None
    for _ in range(pages):
        params = {"limit": 20, **({"after": after} if after else {})}
        started = time.perf_counter()
        response = client.get(first_url, params=params, headers={"Authorization": f"Bearer {key}"})
        timings.append(time.perf_counter() - started)
        body = response.json()
        assert response.status_code == 200 and body["data"], body
        after = body["data"][-1]["id"]
    return timings


def sql_baseline(db_url: str, statements: list[tuple[str, dict]], repeat: int) -> list[float]:
    """The captured statements, executed straight through psycopg, one request's worth at a time."""
    timings = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(repeat):
            for group in statements:
                started = time.perf_counter()
                for sql, params in group:
                    conn.execute(sql, params).fetchall()
                timings.append(time.perf_counter() - started)
    return timings


def capture_sql(url: str, key: str, paths: list[str]) -> list[list[tuple[str, dict]]]:
    """Run the API in-process and record the SQL that the second page (`after` = the first page's last
    id) of each path emits: the statements the direct-SQL baseline runs."""
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.core.db import engine_for
    from app.main import create_app

    recorded: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            recorded.append((statement, parameters))

    engine = engine_for(url)
    sa_event.listen(engine, "before_cursor_execute", record)
    groups = []
    try:
        with TestClient(create_app(Settings(database_url=url, broker_url=REDIS, webhook_sender=False))) as client:
            headers = {"Authorization": f"Bearer {key}"}
            for path in paths:
                after = client.get(path, params={"limit": 20}, headers=headers).json()["data"][-1]["id"]
                recorded.clear()
                assert client.get(path, params={"limit": 20, "after": after}, headers=headers).status_code == 200
                groups.append(list(recorded))
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
    return groups


def report(name: str, timings: list[float], reference: list[float] | None = None, ref_name: str = "") -> None:
    p50, p99 = percentile(timings, 50) * 1000, percentile(timings, 99) * 1000
    line = f"{name:34s} n={len(timings):4d}  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
    if reference:
        line += f"  ({p99 / (percentile(reference, 99) * 1000):.1f}x {ref_name} p99)"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=None, help="keep and reuse this database (loaded once)")
    parser.add_argument("--projects", type=int, default=10, help="projects walked")
    parser.add_argument("--pages", type=int, default=50, help="pages per walk")
    args = parser.parse_args()
    print(f"before: {load()}", flush=True)
    with fresh_database(keep=args.database) as url:
        name = url.rsplit("/", 1)[1]
        populate(psycopg_url(name))
        with psycopg.connect(psycopg_url(name)) as conn:
            counts = conn.execute("SELECT (SELECT count(*) FROM projects), (SELECT count(*) FROM fine_tuning_jobs), "
                                  "(SELECT count(*) FROM job_events)").fetchone()
            long_jobs = [r[0] for r in conn.execute(
                "SELECT j.id FROM fine_tuning_jobs j JOIN projects p ON p.pk = j.project_pk "
                "WHERE j.status = 'running' AND p.name LIKE 'bench-%%' ORDER BY p.name LIMIT %s", (args.projects,))]
        print(f"data: {counts[0]} projects, {counts[1]} jobs, {counts[2]} events")
        keys = [f"sk-whet-bench{i:03d}" for i in range(args.projects)]
        with base_models_dir() as models, api_server(url, models) as server:
            root = server.base.removesuffix("/v1")
            with httpx.Client(timeout=30) as client:
                health = []
                for _ in range(500):
                    started = time.perf_counter()
                    client.get(f"{root}/healthz")
                    health.append(time.perf_counter() - started)
                walk(client, f"{server.base}/fine_tuning/jobs", 5, keys[0])  # warm up
                jobs = [t for k in keys for t in walk(client, f"{server.base}/fine_tuning/jobs", args.pages, k)]
                events = [t for k, j in zip(keys, long_jobs)
                          for t in walk(client, f"{server.base}/fine_tuning/jobs/{j}/events", args.pages, k)]
        # The SQL those requests emit (a page with `after`, of each), straight on Postgres.
        groups = capture_sql(url, keys[0], ["/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{long_jobs[0]}/events"])
        sql_jobs = sql_baseline(psycopg_url(name), [groups[0]], 500)
        sql_events = sql_baseline(psycopg_url(name), [groups[1]], 500)
    report("GET /healthz (HTTP floor)", health)
    report("SQL of one list-jobs request", sql_jobs)
    report("SQL of one list-events request", sql_events)
    report("GET /v1/fine_tuning/jobs?after=", jobs, health, "healthz")
    report("GET .../events?after=", events, health, "healthz")
    print(f"list jobs p99 / its SQL p99: {percentile(jobs, 99) / percentile(sql_jobs, 99):.1f}x; "
          f"list events p99 / its SQL p99: {percentile(events, 99) / percentile(sql_events, 99):.1f}x  (goal: p99 < 20 ms)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
