"""Job events: written by the API and the worker, read as lists (newest first) and as SSE."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.ids import new_id
from app.models import JobEvent
from app.protocol.fine_tuning import JobEvent as JobEventWire
from app.services.event_bus import last_noted, note_event
from app.services.scope import scoped


def add_event(session: Session, job_pk: int, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None, first: bool = False) -> JobEvent:
    """Store an event (published once the session commits). ``first``: the job was created in this
    session and has no event yet."""
    prev = None if first else _newest_event_pk(session, job_pk)
    row = JobEvent(id=new_id("ftevent"), job_pk=job_pk, message=message, level=level, type=type, data=data)
    session.add(row)
    note_event(session, row, prev)
    return row


def _newest_event_pk(session: Session, job_pk: int) -> int | None:
    """The job's newest event: the last one this session added (flushed for its pk), else the database's."""
    mine = last_noted(session, job_pk)
    if mine is not None:
        if mine.pk is None:
            session.flush()
        return mine.pk
    return session.scalar(select(func.max(JobEvent.pk)).where(JobEvent.job_pk == job_pk))


def to_wire(row: JobEvent) -> JobEventWire:
    return JobEventWire(id=row.id, created_at=row.created_at, level=row.level, message=row.message,
                        type=row.type, data=row.data or {})


def events_newest_first(session: Session, caller: Caller, job_pk: int, *, limit: int,
                        after_pk: int | None) -> tuple[list[JobEvent], bool]:
    query = scoped(JobEvent, caller).where(JobEvent.job_pk == job_pk)
    if after_pk is not None:
        query = query.where(JobEvent.pk < after_pk)
    rows = list(session.scalars(query.order_by(JobEvent.pk.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def events_since(session: Session, job_pk: int, since_pk: int, limit: int = 500) -> list[JobEvent]:
    """Oldest first, strictly after `since_pk`: what an SSE follower has not seen yet."""
    query = select(JobEvent).where(JobEvent.job_pk == job_pk, JobEvent.pk > since_pk)
    return list(session.scalars(query.order_by(JobEvent.pk.asc()).limit(limit)))


def event_pk(session: Session, caller: Caller, job_pk: int, event_id: str) -> int | None:
    return session.scalar(scoped(JobEvent, caller, JobEvent.pk).where(JobEvent.job_pk == job_pk,
                                                                      JobEvent.id == event_id))
