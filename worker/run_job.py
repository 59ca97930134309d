"""Run one job id: claim it (a message for a job someone else holds, or that is done, is a
no-op), run it (worker/fine_tune.py) under a lease, release it, and wake the next job waiting
for the project's slot. A dead worker's job is re-queued by the reaper (worker/reaper.py) and
resumes from its last checkpoint."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from sqlalchemy import select, update

from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import public_reason
from app.core.ids import random_token
from app.models import FineTuningJob
from app.services import job_state as state
from app.services.event_bus import configure_publisher
from app.services.queue import send_job
from worker.fine_tune import fine_tune
from worker.job_run import JobFailed, JobRun

log = logging.getLogger("whetstone.worker")


def run_job(settings: Settings, job_id: str, node: str = "worker") -> None:
    """Claim the job and run it; a message for a job someone else holds, or that is done, is a no-op."""
    owner = f"{node}/{random_token(12)}"
    configure_publisher(settings)
    with session_scope(settings.resolved_database_url) as session:
        job = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return
        org = job.project.name
        claimed = state.claim(session, job.pk, owner, settings.lease_seconds)
    if not claimed:
        log.warning("job %s is %s or held by another worker; nothing to do (redelivered message)", job_id, job.status)
        return
    with session_scope(settings.resolved_database_url) as session:  # fresh: the status as claimed
        job = session.scalar(select(FineTuningJob).where(FineTuningJob.pk == job.pk))
        job.project  # noqa: B018 - loaded while the session is open
    run = JobRun(settings, job, org, owner)
    run.start_heartbeat()
    previous = _on_sigterm(run)
    try:
        fine_tune(run)
    except state.LeaseLost:
        log.warning("job %s: lease lost to another worker; this run's results are dropped", job_id)
    except JobFailed as exc:
        run.fail(exc.error)
    except Exception as exc:  # the user sees a clear error; the log keeps the trace
        log.exception("job %s failed", job_id)
        run.fail({"code": "training_failed", "message": public_reason(exc, 1000), "param": None})
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        run.release()
        if not run.waiting_for_slot:  # this run held a slot and has freed it
            wake_next(settings, job.project_pk, send=not run.handoff.is_set())


def _on_sigterm(run: JobRun) -> Any:
    """In the process running the job, SIGTERM asks for a checkpoint and a hand-back instead of death."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: run.handoff.set())


def wake_next(settings: Settings, project_pk: int, send: bool = True) -> None:
    """A slot may be free: send the oldest job of the project that waits in `queued` for one. A
    worker shutting down (`send=False`) could take that message itself: it clears the job's
    `enqueued_at` instead, and the reapers of the workers that stay send it."""
    with session_scope(settings.resolved_database_url) as session:
        job_id = session.scalar(select(FineTuningJob.id).where(
            FineTuningJob.project_pk == project_pk, FineTuningJob.status == "queued",
            FineTuningJob.lease_owner.is_(None)).order_by(FineTuningJob.pk).limit(1))
        if job_id and not send:
            session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(enqueued_at=None))
    if job_id and send:
        send_job(settings, job_id)
