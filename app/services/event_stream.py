"""Server-sent events for a job: every event once, oldest first, `id:` = the event's sequence
number so a client reconnecting with Last-Event-ID resumes exactly; `data: [DONE]` once the
job has finished and everything was sent; a `: keep-alive` comment when nothing was sent for
`events_heartbeat` seconds, so proxies keep the stream open.

The database is the record: a follower always reads `pk > last sent`. Redis pub/sub
(app/services/event_bus.py) wakes it the moment a new event is committed; without Redis, or
while it is away, it polls every `events_poll_interval` seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.models import FineTuningJob
from app.services.event_bus import listener_for
from app.services.events import events_since, to_wire
from app.services.job_state import TERMINAL

BATCH = 500
# With a live subscription, still look at the database this often (a missed message costs at most this).
SAFETY_POLL = 5.0


def _poll(settings: Settings, job_pk: int, since: int) -> tuple[list[tuple[int, str]], bool]:
    with session_scope(settings.resolved_database_url) as session:
        # Read the status first: a job seen finished has written all its events before.
        finished = session.scalar(select(FineTuningJob.status).where(FineTuningJob.pk == job_pk)) in TERMINAL
        rows = events_since(session, job_pk, since, BATCH)
        return [(row.pk, to_wire(row).model_dump_json()) for row in rows], finished


def sse(data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {data}\n\n"


async def follow_job_events(settings: Settings, job_pk: int, since: int,
                            is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    listener = listener_for(settings)
    inbox = listener.subscribe(job_pk) if listener else None
    last_sent = time.monotonic()
    read_db = True
    try:
        while True:
            sent = False
            if read_db:
                if inbox is not None:
                    inbox.take()  # the query below covers all of it; anything later arrives anew
                rows, finished = await run_in_threadpool(_poll, settings, job_pk, since)
                for pk, payload in rows:
                    since = pk
                    yield sse(payload, pk)
                if len(rows) == BATCH:
                    continue
                if finished:
                    yield sse("[DONE]")
                    return
                sent, read_db = bool(rows), False
            else:  # pushed events that follow on from what this client has: no query needed
                for item in inbox.take():
                    if item["pk"] is not None and item["pk"] <= since:
                        continue
                    if item["pk"] is None or item["prev"] != since:
                        read_db = True  # a gap (missed message, other writer): the database has it all
                        break
                    since = item["pk"]
                    yield sse(item["event"], since)
                    sent = True
                    if item["final"]:
                        read_db = True  # the job has finished: the database confirms and we end
                        break
                if read_db:
                    continue
            if sent:
                last_sent = time.monotonic()
            quiet = time.monotonic() - last_sent
            if quiet >= settings.events_heartbeat:
                # (Starlette ends the generator when the client goes; this is for servers that do not.)
                if await is_disconnected():
                    return
                yield ": keep-alive\n\n"
                last_sent, quiet = time.monotonic(), 0.0
            timeout = settings.events_heartbeat - quiet
            if inbox is not None and listener.healthy:
                if not inbox.ready.is_set():
                    try:
                        async with asyncio.timeout(min(timeout, SAFETY_POLL)):
                            await inbox.ready.wait()
                    except TimeoutError:
                        read_db = True  # nothing pushed for a while: look anyway
            else:
                await asyncio.sleep(min(timeout, settings.events_poll_interval))
                read_db = True
    finally:
        if inbox is not None:
            listener.unsubscribe(job_pk, inbox)
