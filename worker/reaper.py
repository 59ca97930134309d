"""The reaper: finds jobs whose worker is gone and messages that never reached a worker.

- A lease past its expiry (the worker was SIGKILLed, ran out of memory, lost its host): a
  running job goes back to `queued` with an event and a new message, and the next worker
  resumes it from its last checkpoint; after `max_attempts` lost runs it fails instead, with
  error.code `max_attempts_exceeded` (a job that kills its worker every time must not loop).
- A waiting job with no message sent (broker down at create, a crash between commit and send)
  or whose message is older than `requeue_after` gets one.

Every worker runs it in a small process of its own beside Celery (`python -m worker.reaper`),
started when the worker is ready; it works the same with Redis and with the embedded broker.
Every change is a conditional UPDATE, so reapers of several workers never act twice.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from sqlalchemy import and_, or_, select, update

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.ids import now
from app.models import Checkpoint, FineTuningJob
from app.services import job_state as state
from app.services.event_bus import configure_publisher
from app.services.events import add_event
from app.services.queue import send_job

log = logging.getLogger("whetstone.reaper")


def take_back(settings: Settings, pk: int, owner: str, lost_before: int) -> str | None:
    """Clear an expired lease; re-queue (or fail) the running job it held. Returns the new status."""
    expired = [FineTuningJob.lease_owner == owner, FineTuningJob.lease_expires_at < time.time()]
    free = {"lease_owner": None, "lease_expires_at": None}
    with session_scope(settings.resolved_database_url) as session:
        lost = lost_before + 1
        step = session.scalar(select(Checkpoint.step_number).where(Checkpoint.job_pk == pk)
                              .order_by(Checkpoint.step_number.desc()).limit(1))
        if lost >= settings.max_attempts:
            error = {"code": "max_attempts_exceeded", "param": None,
                     "message": f"The job's worker stopped {lost} times without finishing (last: worker {owner} "
                                f"stopped renewing its lease); giving up after {settings.max_attempts} attempts."}
            if state.transition(session, pk, "failed", expected=["running"], where=expired, lost_attempts=lost,
                                finished_at=now(), error=error, estimated_finish=None, **free):
                add_event(session, pk, f"Fine-tuning job failed: {error['message']}", level="error")
                return "failed"
        elif state.transition(session, pk, "queued", expected=["running"], where=expired, lost_attempts=lost,
                              enqueued_at=None, estimated_finish=None, **free):
            where = f"resumes from the checkpoint at step {step}" if step else "starts over (no checkpoint yet)"
            add_event(session, pk, f"The worker running this job stopped ({owner} let its lease expire); the job "
                      f"is queued again and {where} (attempt {lost + 1} of {settings.max_attempts})", level="warn",
                      data={"lost_attempts": lost, "resume_step": step})
            return "queued"
        # Not running (paused, cancelled, waiting): only the lease goes.
        session.execute(update(FineTuningJob).where(FineTuningJob.pk == pk, *expired).values(**free))
    return None


def resend_waiting(settings: Settings) -> list[str]:
    """Send a message for each waiting job that has none (or an old one); returns their ids."""
    cutoff = time.time()
    unsent = or_(and_(FineTuningJob.enqueued_at.is_(None), FineTuningJob.created_at < int(cutoff) - 1),
                 FineTuningJob.enqueued_at < cutoff - settings.requeue_after)
    waiting = [FineTuningJob.status.in_(state.WAITING), FineTuningJob.lease_owner.is_(None), unsent]
    with session_scope(settings.resolved_database_url) as session:
        job_ids = session.scalars(select(FineTuningJob.id).where(*waiting).order_by(FineTuningJob.pk).limit(100)).all()
    # `waiting` again in the send: of several reapers, the one whose UPDATE matches sends.
    return [job_id for job_id in job_ids if send_job(settings, job_id, only_if=waiting)]


def reap_once(settings: Settings) -> None:
    with session_scope(settings.resolved_database_url) as session:
        stale = session.execute(select(FineTuningJob.pk, FineTuningJob.lease_owner, FineTuningJob.lost_attempts)
                                .where(FineTuningJob.lease_owner.is_not(None),
                                       FineTuningJob.lease_expires_at < time.time()).limit(100)).all()
    for pk, owner, lost in stale:
        status = take_back(settings, pk, owner, lost)
        if status:
            log.warning("job pk=%s: lease of %s expired; job is now %s", pk, owner, status)
    for job_id in resend_waiting(settings):
        log.info("sent job %s to the queue", job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description="Whetstone job reaper (started by each worker)")
    parser.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reaper %(levelname)s %(message)s")
    settings = get_settings()
    configure_publisher(settings)
    while not args.parent or os.getppid() == args.parent:
        try:
            reap_once(settings)
        except Exception:  # noqa: BLE001 - the database or broker is down: keep trying
            log.exception("reaping failed")
        time.sleep(settings.reap_interval)


if __name__ == "__main__":
    main()
