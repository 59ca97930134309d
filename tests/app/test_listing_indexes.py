"""Listing jobs and events reads an index, not the whole table: the exact SQL the service emits for
a page with `after` is captured and EXPLAINed on Postgres holding ANALYZE'd data of many projects
(the planner's own choice, seq scans allowed), and the plan must be a backward index scan on the
right index with no sort and no sequential scan of the big table."""

from __future__ import annotations

import json

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.core.auth import create_key
from app.core.config import Settings
from app.core.db import engine_for, session_scope
from tests.conftest import REDIS_URL

PROJECTS, JOBS, LONG_JOBS, LONG_EVENTS = 60, 150, 6, 3000


def _populate(dsn: str, project_pk: int) -> None:
    with psycopg.connect(dsn) as conn:
        pks = [project_pk] + [conn.execute("INSERT INTO projects (id, name, created_at) VALUES (%s, %s, 0) "
                                           "RETURNING pk", (f"proj-x{p}", f"x{p}")).fetchone()[0]
                              for p in range(PROJECTS - 1)]
        with conn.cursor().copy("COPY fine_tuning_jobs (id, project_pk, model, training_file, seed, "
                                "hyperparameters, status, result_files, created_at) FROM STDIN") as copy:
            for j in range(PROJECTS * JOBS):
                copy.write_row((f"ftjob-{j:024d}", pks[j % PROJECTS], "m", "file-x", 0, "{}", "succeeded", "[]", j))
        long_jobs = [r[0] for r in conn.execute(
            "SELECT pk FROM fine_tuning_jobs WHERE project_pk = %s ORDER BY pk DESC LIMIT %s", (project_pk, LONG_JOBS))]
        all_jobs = [r[0] for r in conn.execute("SELECT pk FROM fine_tuning_jobs")]
        with conn.cursor().copy("COPY job_events (id, job_pk, created_at, level, type, message) FROM STDIN") as copy:
            n = 0
            for job in all_jobs:
                copy.write_row((f"ftevent-{n:024d}", job, 0, "info", "message", "created"))
                n += 1
            for step in range(LONG_EVENTS):  # long jobs' events interleaved, as concurrent runs write them
                for job in long_jobs:
                    copy.write_row((f"ftevent-{n:024d}", job, step, "info", "metrics", f"step {step}"))
                    n += 1
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


@pytest.fixture(scope="module")
def fresh_postgres_url(tmp_path_factory):  # one loaded database for the module's tests
    import uuid

    from app.cli import migrate_database
    from tests.conftest import POSTGRES_ADMIN

    name = f"whetstone_idx_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    migrate_database(Settings(database_url=url))
    yield url
    engine_for(url).dispose()
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def listing(fresh_postgres_url, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("listing"), database_url=fresh_postgres_url,
                        broker_url=REDIS_URL, webhook_sender=False)
    with session_scope(fresh_postgres_url) as session:
        key = create_key(session, "listing")
    with session_scope(fresh_postgres_url) as session:
        from app.core.auth import authenticate

        project_pk = authenticate(session, f"Bearer {key}").project_pk
    _populate(fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://"), project_pk)
    from app.main import create_app

    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {key}"}, fresh_postgres_url


def _emitted_sql(client, headers, url: str, path: str) -> list[tuple[str, dict]]:
    """The SELECTs one request for the second page (`after` = the first page's last id) sends."""
    after = client.get(path, params={"limit": 20}, headers=headers).json()["data"][-1]["id"]
    statements: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    engine = engine_for(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get(path, params={"limit": 20, "after": after}, headers=headers)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200 and len(response.json()["data"]) == 20, response.text
    return statements


def _plan_nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("Plans", []) for n in _plan_nodes(child)]


def _explain(url: str, sql: str, params: dict) -> list[dict]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
    return _plan_nodes((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])


def _page_query(url: str, statements: list[tuple[str, dict]], table: str) -> list[dict]:
    """The plan of the statement that reads the page: ORDER BY ... LIMIT on `table`."""
    pages = [(sql, p) for sql, p in statements if f"FROM {table}" in sql and "ORDER BY" in sql and "LIMIT" in sql]
    assert len(pages) == 1, statements
    return _explain(url, *pages[0])


@pytest.mark.parametrize(("path", "table", "index"), [
    ("/v1/fine_tuning/jobs", "fine_tuning_jobs", "ix_jobs_project_pk_pk"),
    ("events", "job_events", "ix_job_events_job_pk_pk"),
], ids=["jobs", "events"])
def test_a_page_with_after_is_an_index_scan(listing, path, table, index):
    client, headers, url = listing
    if path == "events":  # the project's long job: thousands of events
        job = client.get("/v1/fine_tuning/jobs", params={"limit": 1}, headers=headers).json()["data"][0]["id"]
        path = f"/v1/fine_tuning/jobs/{job}/events"
    statements = _emitted_sql(client, headers, url, path)
    nodes = _page_query(url, statements, table)
    scans = [n for n in nodes if n.get("Relation Name") == table]
    assert [(n["Node Type"], n.get("Index Name"), n.get("Scan Direction")) for n in scans] == \
        [("Index Scan", index, "Backward")], nodes
    assert not any(n["Node Type"] == "Sort" for n in nodes), nodes  # the index gives the order
    for sql, params in statements:  # and nothing else the request sends scans a big table
        for node in _explain(url, sql, params):
            assert not (node["Node Type"] == "Seq Scan" and node.get("Relation Name") in {"fine_tuning_jobs",
                                                                                          "job_events"}), sql
