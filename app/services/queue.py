"""Sending work to the workers: only the job id travels; the database owns the job."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.core.config import Settings


@lru_cache
def _celery_for(broker_url: str, queue: str) -> Celery:
    from worker.celery_app import make_celery

    settings = Settings(broker_url=broker_url, queue=queue)
    return make_celery(settings)


def enqueue_training(settings: Settings, job_id: str) -> None:
    app = _celery_for(settings.resolved_broker_url, settings.queue)
    from worker.celery_app import TRAIN_TASK

    app.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue)


def enqueue_evaluation(settings: Settings, evaluation_id: str) -> None:
    from worker.celery_app import EVAL_TASK

    _celery_for(settings.resolved_broker_url, settings.queue).send_task(EVAL_TASK, args=[evaluation_id],
                                                                        queue=settings.queue)
