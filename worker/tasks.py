"""The Celery tasks of a training worker: `whetstone.train_job` runs one job id
(worker/run_job.py). The evaluation task is in worker/eval_tasks.py."""

from __future__ import annotations

from app.core.config import get_settings
from worker import lifecycle  # noqa: F401 - connects the worker's signal handlers
from worker.celery_app import TRAIN_TASK, app
from worker.job_run import JobRun
from worker.run_job import run_job

__all__ = ["JobRun", "run_job", "train_job"]


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> None:  # noqa: ANN001
    run_job(get_settings(), job_id, node=self.request.hostname or "worker")
