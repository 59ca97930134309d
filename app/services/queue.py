"""Sending work to the workers: only the job id travels; the database owns the job.

A message is a hint: a job whose message never left (broker down, a crash between commit and
send) or got lost keeps `enqueued_at` NULL or old, and the reaper (worker/reaper.py) sends again."""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from celery import Celery
from sqlalchemy import update

from app.core.config import Settings
from app.core.db import session_scope
from app.models import FineTuningJob

log = logging.getLogger("whetstone.queue")


@lru_cache
def _celery_for(broker_url: str, queue: str, send_timeout: float) -> Celery:
    from worker.celery_app import make_celery

    settings = Settings(broker_url=broker_url, queue=queue, broker_send_timeout=send_timeout)
    return make_celery(settings)


def enqueue_training(settings: Settings, job_id: str) -> None:
    """Send the job id to the workers; raises if the broker cannot take it."""
    from worker.celery_app import TRAIN_TASK

    app = _celery_for(settings.resolved_broker_url, settings.queue, settings.broker_send_timeout)
    app.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue, retry=False)


def send_job(settings: Settings, job_id: str) -> bool:
    """Send the job id and record when; False (logged) if the broker is unavailable."""
    try:
        enqueue_training(settings, job_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure means: the reaper sends it later
        log.warning("could not send job %s to the queue (will retry): %s", job_id, exc)
        return False
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(enqueued_at=time.time()))
    return True


def enqueue_evaluation(settings: Settings, evaluation_id: str) -> None:
    from worker.celery_app import EVAL_TASK

    _celery_for(settings.resolved_broker_url, settings.queue, settings.broker_send_timeout).send_task(
        EVAL_TASK, args=[evaluation_id], queue=settings.queue)
