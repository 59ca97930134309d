"""Server-sent events for a job: every event once, oldest first, `id:` = the event's sequence
number so a client reconnecting with Last-Event-ID resumes exactly; `data: [DONE]` once the
job has finished and everything was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.models import FineTuningJob
from app.services.events import events_since, to_wire
from app.services.jobs import TERMINAL


def _poll(settings: Settings, job_pk: int, since: int) -> tuple[list[tuple[int, str]], bool]:
    with session_scope(settings.resolved_database_url) as session:
        # Read the status first: a job seen finished has written all its events before.
        finished = session.scalar(select(FineTuningJob.status).where(FineTuningJob.pk == job_pk)) in TERMINAL
        rows = events_since(session, job_pk, since)
        return [(row.pk, to_wire(row).model_dump_json()) for row in rows], finished


def sse(data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {data}\n\n"


async def follow_job_events(settings: Settings, job_pk: int, since: int,
                            is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    idle_polls = 0
    while True:
        rows, finished = await run_in_threadpool(_poll, settings, job_pk, since)
        for pk, payload in rows:
            since = pk
            yield sse(payload, pk)
        if finished and not rows:
            yield sse("[DONE]")
            return
        if rows:
            idle_polls = 0
            continue
        idle_polls += 1
        if idle_polls % 30 == 0:
            yield ": keep-alive\n\n"
        if await is_disconnected():
            return
        await asyncio.sleep(settings.events_poll_interval)

