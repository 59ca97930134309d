"""The Celery application. The broker carries only job ids; the database owns job state."""

from __future__ import annotations

from celery import Celery

from app.core.config import Settings, get_settings

TRAIN_TASK = "whetstone.train_job"
EVAL_TASK = "whetstone.evaluate"  # worker/eval_tasks.py


def make_celery(settings: Settings) -> Celery:
    app = Celery("whetstone", broker=settings.resolved_broker_url, include=["worker.tasks", "worker.eval_tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_acks_late=True,
        # A job whose worker died is re-queued by the reaper from its lease, not by redelivery:
        # a job that kills its worker every time then fails after max_attempts instead of looping.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # a fresh process per job: GPU memory is freed between jobs
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_send_timeout,
    )
    if not settings.broker_is_embedded:
        app.conf.broker_transport_options = {"visibility_timeout": settings.broker_visibility_timeout,
                                             "socket_connect_timeout": settings.broker_send_timeout}
    return app


app = make_celery(get_settings())
