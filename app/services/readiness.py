"""Readiness: can this process reach the database, the broker and the storage right now?

Each check runs in its own thread with a deadline, so a dependency that hangs (a firewall that
drops packets) answers "timed out" instead of holding the probe."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

from sqlalchemy import text

from app.core.config import Settings
from app.core.db import engine_for
from app.services.storage import Storage

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


def check_database(settings: Settings) -> None:
    with engine_for(settings.resolved_database_url).connect() as conn:
        conn.execute(text("SELECT 1"))


def check_broker(settings: Settings) -> None:
    url, timeout = settings.resolved_broker_url, settings.ready_timeout
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    elif url.startswith("sqla+"):
        with engine_for(url.removeprefix("sqla+")).connect() as conn:
            conn.execute(text("SELECT 1"))
    else:
        from kombu import Connection

        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1)


def readiness(settings: Settings, storage: Storage) -> dict[str, str]:
    """{"database": "ok" | reason, "broker": ..., "storage": ...}"""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(settings),
        "broker": lambda: check_broker(settings),
        "storage": storage.check,
    }
    futures = {name: _pool.submit(fn) for name, fn in checks.items()}
    results = {}
    for name, future in futures.items():
        try:
            future.result(timeout=settings.ready_timeout)
            results[name] = "ok"
        except concurrent.futures.TimeoutError:
            results[name] = f"timed out after {settings.ready_timeout:g}s"
        except Exception as exc:  # the reason, on one line, for the operator
            first_line = (str(exc).strip().splitlines() or [""])[0]
            results[name] = f"{type(exc).__name__}: {first_line}"[:300]
    return results
