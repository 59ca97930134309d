"""The job lifecycle, run by a worker for one job id.

The database owns the job; the broker message is only a hint. Every status change is one
conditional UPDATE from the status we expect, so a second delivery of the same id, a user's
cancel racing the end of training, or a late write from a stale worker changes nothing.

validating_files -> queued -> running -> succeeded | failed ; cancelled at any point by the user.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.ids import new_id, now
from app.models import Checkpoint, File, FineTunedModel, FineTuningJob
from app.services.base_models import ensure_base_model
from app.services.events import add_event
from app.services.jobs import fine_tuned_model_name
from app.services.storage import storage_for
from worker import legacy_results
from worker.celery_app import TRAIN_TASK, app

log = logging.getLogger("whetstone.worker")
from worker.dataprep.checks import MIN_EXAMPLES, too_few_message  # noqa: E402  (shared with prepare-data)


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


@app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> None:
    run_job(get_settings(), job_id)


class JobRun:
    """Database side of one job's run: status moves, events, checkpoints, the result."""

    def __init__(self, settings: Settings, job: FineTuningJob, org: str) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.job = job
        self.model_name = fine_tuned_model_name(job, org)
        self.workdir = settings.jobs_dir / job.id
        self.storage = storage_for(settings, "files")  # uploads and results
        self.jobs = storage_for(settings, "jobs")  # adapters and checkpoints, shared with the API
        self._checked_at = 0.0
        self._cancelled = False

    def move(self, expected: str, new: str, message: str | None = None, **values: Any) -> bool:
        with session_scope(self.url) as session:
            changed = session.execute(update(FineTuningJob).where(
                FineTuningJob.pk == self.job.pk, FineTuningJob.status == expected).values(status=new, **values)).rowcount
            if changed and message:
                add_event(session, self.job.pk, message)
        return bool(changed)

    def event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None:
        with session_scope(self.url) as session:
            add_event(session, self.job.pk, message, level=level, type=type, data=data)

    # TrainingCallbacks
    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None:
        if data and data.get("valid_loss") is not None:  # issue 9: perplexity beside each validation loss
            data = {**data, "valid_perplexity": math.exp(data["valid_loss"])}
        self.event(message, type=type, level=level, data=data)

    def should_stop(self) -> bool:
        if not self._cancelled and time.monotonic() - self._checked_at > 1.0:
            self._checked_at = time.monotonic()
            with session_scope(self.url) as session:
                status = session.scalar(select(FineTuningJob.status).where(FineTuningJob.pk == self.job.pk))
            self._cancelled = status != "running"
        return self._cancelled

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        ref = self.jobs.publish_dir(f"{self.job.id}/checkpoints/{path.name}", path)  # before the row names it
        with session_scope(self.url) as session:
            session.add(Checkpoint(id=new_id("ftckpt"), job_pk=self.job.pk, step_number=step,
                                   metrics={k: v for k, v in metrics.items() if v is not None},
                                   model_id=f"{self.model_name}:ckpt-step-{step}", adapter_path=ref))
            add_event(session, self.job.pk, f"Checkpoint created at step {step}")

    def data_path(self, file_id: str, param: str) -> tuple[Path, int]:
        """The stored file and its example count (checked line by line when it was uploaded)."""
        with session_scope(self.url) as session:
            row = session.scalar(select(File).where(File.id == file_id, File.project_pk == self.job.project_pk))
        try:
            if row is None:
                raise FileNotFoundError(file_id)
            return self.storage.local_path(row.storage_key), row.n_examples or 0
        except FileNotFoundError:
            raise JobFailed(f"invalid_{param}", f"The {param} {file_id} no longer exists.", param) from None

    def results_file(self, metrics: list[dict], legacy_classification: dict | None = None) -> str:
        if self.job.legacy is not None:  # a legacy fine-tune: the legacy columns
            content = legacy_results.results_csv(metrics, legacy_classification)
        else:
            content = self._results_csv(metrics)
        return self._store_results(content)

    def _results_csv(self, metrics: list[dict]) -> bytes:
        columns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                   "learning_rate", "tokens_per_second"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in metrics:
            values = [row.get("step"), row.get("train_loss"), row.get("train_mean_token_accuracy"),
                      row.get("valid_loss"), row.get("valid_mean_token_accuracy"), row.get("learning_rate"),
                      row.get("tokens_per_second")]
            writer.writerow(["" if v is None else v for v in values])
        return out.getvalue().encode()

    def _store_results(self, content: bytes) -> str:
        file_id = new_id("file")
        key = f"{self.job.project.id}/{file_id}.csv"
        with self.storage.writer(key) as w:
            w.write(content)
            w.commit()
        with session_scope(self.url) as session:
            session.add(File(id=file_id, project_pk=self.job.project_pk, filename="step_metrics.csv",
                             purpose="fine-tune-results", bytes=len(content), storage_key=key))
        return file_id

    def succeed(self, adapter_ref: str, trained_tokens: int, result_file: str) -> bool:
        with session_scope(self.url) as session:
            changed = session.execute(update(FineTuningJob).where(
                FineTuningJob.pk == self.job.pk, FineTuningJob.status == "running").values(
                status="succeeded", fine_tuned_model=self.model_name, trained_tokens=trained_tokens,
                finished_at=now(), result_files=[result_file])).rowcount
            if not changed:
                session.rollback()
                return False
            session.add(FineTunedModel(id=self.model_name, project_pk=self.job.project_pk, job_pk=self.job.pk,
                                       base_model=self.job.model, adapter_path=adapter_ref))
            add_event(session, self.job.pk, f"New fine-tuned model created: {self.model_name}")
            add_event(session, self.job.pk, "The job has successfully completed")
        return True

    def fail(self, error: dict) -> None:
        with session_scope(self.url) as session:
            changed = session.execute(update(FineTuningJob).where(
                FineTuningJob.pk == self.job.pk, FineTuningJob.status.in_(["validating_files", "queued", "running"]))
                .values(status="failed", finished_at=now(), error=error)).rowcount
            if changed:
                add_event(session, self.job.pk, f"Fine-tuning job failed: {error['message']}", level="error")


def run_job(settings: Settings, job_id: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        job = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return
        org = job.project.name
    if job.status != "validating_files":
        log.info("job %s is %s; nothing to do (redelivered message)", job_id, job.status)
        return
    run = JobRun(settings, job, org)
    try:
        _run(run)
    except JobFailed as exc:
        run.fail(exc.error)
    except Exception as exc:  # the user sees a clear error; the log keeps the trace
        log.exception("job %s failed", job_id)
        run.fail({"code": "training_failed", "message": f"{type(exc).__name__}: {exc}"[:1000], "param": None})


def _run(run: JobRun) -> None:
    from worker.training import TrainingConfig, resolve_hyperparameters, train
    from worker.training.config import training_options

    job = run.job
    run.event(f"Validating training file: {job.training_file}")
    training_path, n_examples = run.data_path(job.training_file, "training_file")
    if n_examples < MIN_EXAMPLES:
        raise JobFailed("invalid_training_file", too_few_message(n_examples), "training_file")
    validation_path = None
    if job.validation_file:
        run.event(f"Validating validation file: {job.validation_file}")
        validation_path, _ = run.data_path(job.validation_file, "validation_file")
    try:
        hyper = resolve_hyperparameters(job.hyperparameters, n_examples)
        options = training_options(job.hyperparameters)
    except ValueError as exc:
        raise JobFailed("invalid_hyperparameters", str(exc), "hyperparameters") from None
    resolved = {**job.hyperparameters, "n_epochs": hyper.n_epochs, "batch_size": hyper.batch_size,
                "learning_rate_multiplier": hyper.learning_rate_multiplier}
    if not run.move("validating_files", "queued", "Files validated, moving job to queued state",
                    resolved_hyperparameters=resolved):
        return
    if not run.move("queued", "running", "Fine-tuning job started", started_at=now()):
        return
    base_dir = ensure_base_model(run.settings, job.model)
    config = TrainingConfig(
        base_model_dir=base_dir, training_file=training_path, validation_file=validation_path,
        output_dir=run.workdir / "adapter", checkpoint_dir=run.workdir / "checkpoints",
        hyperparameters=hyper, seed=job.seed, **options,
    )
    result = train(config, run)
    if result.stopped:
        run.event("Training stopped: the job is no longer running")
        return
    report_best_checkpoint(run, result.metrics)
    classification = None
    if (job.legacy or {}).get("compute_classification_metrics") and validation_path is not None:
        run.event("Computing classification metrics on the validation file")
        classification = legacy_results.classification_metrics(base_dir, result.adapter_dir, validation_path,
                                                                job.legacy, config.max_seq_len)
    result_file = run.results_file(result.metrics, classification)
    adapter_ref = run.jobs.publish_dir(f"{job.id}/adapter", result.adapter_dir)
    run.succeed(adapter_ref, result.trained_tokens, result_file)


def report_best_checkpoint(run: JobRun, metrics: list[dict]) -> None:
    """At the end of training: the saved checkpoint with the lowest validation loss (issue 9).
    Without checkpoints that carry a validation loss, the best logged step is named instead."""
    from worker.evaluation import best_by_validation_loss

    with session_scope(run.url) as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_pk == run.job.pk))
        saved = {c.step_number: c.model_id for c in rows}
    best = best_by_validation_loss([m for m in metrics if m.get("step") in saved]) or best_by_validation_loss(metrics)
    if best is None:
        return
    model = saved.get(best["step"])
    where = f": {model}" if model else " (no checkpoint was saved at that step)"
    run.event(f"Best checkpoint by validation loss: step {best['step']} (validation loss {best['valid_loss']:.4f}, "
              f"perplexity {best['valid_perplexity']:.4g}){where}", data={**best, "fine_tuned_model_checkpoint": model})
