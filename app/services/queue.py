"""Sending work to the workers: only an id travels; the database owns the job.

One path sends a training job, whoever sends it (the API after the commit, a worker freeing a
slot, the reaper): `send_job` records the send time (`enqueued_at`) first, optionally only while
the job still meets the caller's conditions (so that of several reapers one sends), then
publishes once, without kombu's retries; if the broker cannot take it, `enqueued_at` goes back
to NULL and the reaper (worker/reaper.py) sends it when the broker is back. A message is a hint:
redelivery or a duplicate is harmless (the worker's claim decides)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from functools import lru_cache

from celery import Celery
from sqlalchemy import ColumnElement, update

from app.core.config import Settings
from app.core.db import session_scope
from app.models import FineTuningJob

log = logging.getLogger("whetstone.queue")


@lru_cache
def _celery_for(broker_url: str, queue: str, send_timeout: float) -> Celery:
    from worker.celery_app import make_celery

    settings = Settings(broker_url=broker_url, queue=queue, broker_send_timeout=send_timeout)
    return make_celery(settings)


def _publish(settings: Settings, task: str, object_id: str) -> None:
    """One message with the id; raises at once if the broker cannot take it (no retry loop: the
    caller, or the reaper, decides what happens next)."""
    app = _celery_for(settings.resolved_broker_url, settings.queue, settings.broker_send_timeout)
    app.send_task(task, args=[object_id], queue=settings.queue, retry=False)


def send_job(settings: Settings, job_id: str, only_if: Iterable[ColumnElement[bool]] = ()) -> bool:
    """Send the job id to the workers and record when. False (logged) when the job no longer meets
    `only_if`, or when the broker is unavailable (then the reaper sends it later)."""
    from worker.celery_app import TRAIN_TASK

    url = settings.resolved_database_url
    this_job = FineTuningJob.id == job_id
    with session_scope(url) as session:
        if not session.execute(update(FineTuningJob).where(this_job, *only_if)
                               .values(enqueued_at=time.time())).rowcount:
            return False
    try:
        _publish(settings, TRAIN_TASK, job_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure means: the reaper sends it later
        log.warning("could not send job %s to the queue (will retry): %s", job_id, exc)
        with session_scope(url) as session:
            session.execute(update(FineTuningJob).where(this_job).values(enqueued_at=None))
        return False
    return True


def enqueue_evaluation(settings: Settings, evaluation_id: str) -> None:
    """Send the evaluation id to the workers; raises if the broker cannot take it."""
    from worker.celery_app import EVAL_TASK

    _publish(settings, EVAL_TASK, evaluation_id)
