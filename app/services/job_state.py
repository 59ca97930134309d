"""The fine-tuning job state machine and the lease that says which worker owns a job.

Statuses are OpenAI's plus `paused`. Every change is one conditional UPDATE from the statuses
the transition table allows (and, for a worker, only while it still holds the lease), so a
second delivery, a cancel racing the end of training or a stale worker writing late changes
nothing: the UPDATE matches no row and the caller learns it lost.

    validating_files -> queued -> running -> succeeded | failed
    any non-final    -> cancelled | failed ; validating_files | queued | running -> paused
    running -> queued (worker lost, or handed back on shutdown) ; paused -> queued (resume)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from app.models import FineTuningJob, Project
from app.services.event_bus import note_finished

STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
WAITING = ("validating_files", "queued")
TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "paused", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "queued", "paused", "failed", "cancelled"}),
    "paused": frozenset({"queued", "failed", "cancelled"}),
}


class IllegalTransition(ValueError):
    pass


class LeaseLost(Exception):
    """This worker no longer owns the job (its lease expired and another worker took it)."""


def sources(new: str, expected: Iterable[str] | None = None) -> list[str]:
    """The statuses a job may move to `new` from (restricted to `expected`)."""
    allowed = [s for s in STATUSES if new in TRANSITIONS.get(s, ())]
    if expected is None:
        return allowed
    expected = list(expected)
    illegal = [s for s in expected if s not in allowed]
    if illegal:
        raise IllegalTransition(f"a job cannot move from {illegal} to {new!r}")
    return expected


def transition(session: Session, job_pk: int, new: str, *, expected: Iterable[str] | None = None,
               owner: str | None = None, where: Iterable[ColumnElement[bool]] = (), **values: Any) -> bool:
    """Move the job to `new` if it is in an allowed status (and `owner` still holds it). True if it moved."""
    stmt = update(FineTuningJob).where(FineTuningJob.pk == job_pk, FineTuningJob.status.in_(sources(new, expected)),
                                       *where)
    if owner is not None:
        stmt = stmt.where(FineTuningJob.lease_owner == owner)
    moved = session.execute(stmt.values(status=new, **values)).rowcount == 1
    if moved and new in TERMINAL:
        note_finished(session, job_pk)
    return moved


def _free() -> ColumnElement[bool]:
    return or_(FineTuningJob.lease_owner.is_(None), FineTuningJob.lease_expires_at < time.time())


def claim(session: Session, job_pk: int, owner: str, lease_seconds: float) -> bool:
    """Take a waiting job nobody holds. A redelivered message for a job someone holds claims nothing."""
    return session.execute(
        update(FineTuningJob).where(FineTuningJob.pk == job_pk, FineTuningJob.status.in_(WAITING), _free())
        .values(lease_owner=owner, lease_expires_at=time.time() + lease_seconds)).rowcount == 1


def renew(session: Session, job_pk: int, owner: str, lease_seconds: float) -> bool:
    return session.execute(
        update(FineTuningJob).where(FineTuningJob.pk == job_pk, FineTuningJob.lease_owner == owner)
        .values(lease_expires_at=time.time() + lease_seconds)).rowcount == 1


def hold(session: Session, job_pk: int, owner: str) -> None:
    """Fence a worker's write: lock the job row for this transaction if `owner` still holds it, else raise."""
    held = session.execute(update(FineTuningJob).where(FineTuningJob.pk == job_pk, FineTuningJob.lease_owner == owner)
                           .values(lease_owner=owner)).rowcount
    if not held:
        raise LeaseLost(f"job {job_pk} is no longer held by {owner}")


def release(session: Session, job_pk: int, owner: str) -> bool:
    return session.execute(update(FineTuningJob).where(FineTuningJob.pk == job_pk, FineTuningJob.lease_owner == owner)
                           .values(lease_owner=None, lease_expires_at=None)).rowcount == 1


def running_in_project(session: Session, project_pk: int) -> int:
    return session.scalar(select(func.count()).select_from(FineTuningJob).where(
        FineTuningJob.project_pk == project_pk, FineTuningJob.status == "running")) or 0


def start_running(session: Session, job: FineTuningJob, owner: str, limit: int, **values: Any) -> bool:
    """queued -> running unless the project already runs `limit` jobs (0: no limit).

    The project row is locked first (Postgres), so two workers cannot both take the last slot."""
    session.execute(select(Project.pk).where(Project.pk == job.project_pk).with_for_update())
    if limit and running_in_project(session, job.project_pk) >= limit:
        return False
    return transition(session, job.pk, "running", expected=["queued"], owner=owner, **values)


def queue_position(session: Session, job_pk: int) -> int:
    """1 + the jobs waiting (validating or queued, held by no worker) that were created before this one."""
    return 1 + (session.scalar(select(func.count()).select_from(FineTuningJob).where(
        FineTuningJob.status.in_(WAITING), FineTuningJob.pk < job_pk, FineTuningJob.lease_owner.is_(None))) or 0)
