"""The baseline of bench/dispatch.py: Celery with nothing of Whetstone's, on the same Redis broker
and the same worker options (prefork, one process, acks late, prefetch 1, a fresh child per task).
Its one task says on a Redis channel the moment it starts.

    BARE_CELERY_QUEUE=q celery -A bench.bare_celery worker -Q q --concurrency=1 --pool=prefork
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("WHETSTONE_TEST_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BARE_CELERY_QUEUE", "bare")
app = Celery("bare", broker=BROKER)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True, task_acks_late=True,
                worker_prefetch_multiplier=1, worker_max_tasks_per_child=1, task_default_queue=QUEUE)


@app.task(name="bare.started")
def started(token: str) -> None:
    redis.Redis.from_url(BROKER).publish(f"bare:{QUEUE}", f"{token} {time.time()}")
