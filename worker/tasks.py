"""The job lifecycle, run by a worker for one job id.

The database owns the job; the broker message is only a hint. The worker first claims the job
(one conditional UPDATE taking a lease), renews the lease from a heartbeat thread while it
works, and writes nothing once the lease is gone (app/services/job_state.py). A job that a
dead worker left behind is re-queued by the reaper (worker/reaper.py) and resumes from its last
checkpoint; pause, and a worker's SIGTERM, checkpoint and hand the job back.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.ids import new_id, now, random_token
from app.models import Checkpoint, File, FineTunedModel, FineTuningJob
from app.services import job_state as state
from app.services.base_models import ensure_base_model
from app.services.event_bus import configure_publisher
from app.services.events import add_event
from app.services.jobs import fine_tuned_model_name
from app.services.queue import send_job
from app.services.storage import storage_for
from worker import legacy_results
from worker.results import results_csv
from worker.tracking import tracked
from worker import lifecycle  # noqa: F401 - connects the worker's signal handlers
from worker.celery_app import TRAIN_TASK, app

log = logging.getLogger("whetstone.worker")
from worker.dataprep.checks import MIN_EXAMPLES, too_few_message  # noqa: E402  (shared with prepare-data)


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> None:  # noqa: ANN001
    run_job(get_settings(), job_id, node=self.request.hostname or "worker")


class JobRun:
    """Database side of one job's run, as the holder of its lease: status moves, events,
    checkpoints, the result. Every write checks the lease (fencing)."""

    def __init__(self, settings: Settings, job: FineTuningJob, org: str, owner: str) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.job = job
        self.owner = owner
        self.model_name = fine_tuned_model_name(job, org)
        self.workdir = settings.jobs_dir / job.id
        self.storage = storage_for(settings, "files")  # uploads and results
        self.jobs = storage_for(settings, "jobs")  # adapters and checkpoints, shared with the API
        self.lost = threading.Event()
        self.handoff = threading.Event()  # set by SIGTERM: checkpoint and give the job back
        self.waiting_for_slot = False  # the project's running-job limit was reached: the job waits
        self._stop_heartbeat = threading.Event()
        self._status: tuple[float, str | None] = (0.0, None)
        self._progress: tuple[float, int] | None = None

    # --- the lease ---------------------------------------------------------------------------
    def start_heartbeat(self) -> threading.Thread:
        def beat() -> None:
            while not self._stop_heartbeat.wait(self.settings.lease_seconds / 3):
                try:
                    with session_scope(self.url) as session:
                        renewed = state.renew(session, self.job.pk, self.owner, self.settings.lease_seconds)
                except Exception:  # noqa: BLE001 - a DB hiccup: try again next beat; the lease has slack
                    log.exception("lease renewal failed for %s", self.job.id)
                    continue
                if not renewed:
                    log.warning("job %s: lease lost; stopping", self.job.id)
                    self.lost.set()
                    return

        thread = threading.Thread(target=beat, name=f"lease-{self.job.id}", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        self._stop_heartbeat.set()
        with session_scope(self.url) as session:
            state.release(session, self.job.pk, self.owner)
            status = session.scalar(select(FineTuningJob.status).where(FineTuningJob.pk == self.job.pk))
        # Resumed while we paused, or handed back: someone must pick it up. A job that found no free
        # slot is not sent again here: the run that frees a slot sends it (wake_next).
        if status == "queued" and not self.waiting_for_slot:
            send_job(self.settings, self.job.id)

    def move(self, new: str, expected: list[str], message: str | None = None, *, data: dict | None = None,
             **values: Any) -> bool:
        with session_scope(self.url) as session:
            moved = state.transition(session, self.job.pk, new, expected=expected, owner=self.owner, **values)
            if moved and message:
                add_event(session, self.job.pk, message, data=data)
        return moved

    def status(self, max_age: float = 0.05) -> str | None:
        """The job's status (None once another worker holds it), read at most every `max_age` s."""
        at, status = self._status
        if time.monotonic() - at > max_age:
            with session_scope(self.url) as session:
                row = session.execute(select(FineTuningJob.status, FineTuningJob.lease_owner)
                                      .where(FineTuningJob.pk == self.job.pk)).one()
            status = row.status if row.lease_owner == self.owner else None
            self._status = (time.monotonic(), status)
        return status

    def event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None,
              **job_values: Any) -> None:
        with session_scope(self.url) as session:
            state.hold(session, self.job.pk, self.owner)
            if job_values:
                session.execute(update(FineTuningJob).where(FineTuningJob.pk == self.job.pk).values(**job_values))
            add_event(session, self.job.pk, message, level=level, type=type, data=data)

    # --- TrainingCallbacks -------------------------------------------------------------------
    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None:
        if data and data.get("valid_loss") is not None:  # issue 9: perplexity beside each validation loss
            data = {**data, "valid_perplexity": math.exp(data["valid_loss"])}
        values = {}
        if type == "metrics" and data and data.get("step") and data.get("total_steps"):
            values["estimated_finish"] = self._estimate(int(data["step"]), int(data["total_steps"]))
        self.event(message, type=type, level=level, data=data, **values)

    def _estimate(self, step: int, total: int) -> int:
        """Unix time the run should end, from the pace since the first step this run took."""
        if self._progress is None:
            self._progress = (time.time(), step)
            return now()
        started, first = self._progress
        pace = (time.time() - started) / max(step - first, 1)
        return int(time.time() + pace * (total - step))

    def should_stop(self) -> bool:
        """Cancelled, failed elsewhere, or the lease lost: stop now, without a checkpoint."""
        if self.lost.is_set():
            return True
        status = self.status()
        return status is None or status in state.TERMINAL

    def should_pause(self) -> bool:
        """Paused by the user, or the worker is shutting down: checkpoint, then give the job back."""
        if self.handoff.is_set() and self.status() == "running":
            self.move("queued", ["running"], "The worker is shutting down: the job is checkpointed and goes back "
                      "to the queue")
            self._status = (0.0, None)
        return self.status() in ("paused", "queued")

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        with session_scope(self.url) as session:
            state.hold(session, self.job.pk, self.owner)  # a stale worker publishes nothing
        ref = self.jobs.publish_dir(f"{self.job.id}/checkpoints/{path.name}", path)  # before the row names it
        with session_scope(self.url) as session:
            state.hold(session, self.job.pk, self.owner)
            model_id = f"{self.model_name}:ckpt-step-{step}"
            row = session.scalar(select(Checkpoint).where(Checkpoint.model_id == model_id))
            if row is not None:  # the same step again after a resume: point at the newest files
                row.adapter_path, row.metrics = ref, {k: v for k, v in metrics.items() if v is not None}
                return
            session.add(Checkpoint(id=new_id("ftckpt"), job_pk=self.job.pk, step_number=step,
                                   metrics={k: v for k, v in metrics.items() if v is not None},
                                   model_id=model_id, adapter_path=ref))
            add_event(session, self.job.pk, f"Checkpoint created at step {step}", data={"step": step})

    def on_checkpoint_removed(self, step: int, path: Path) -> None:
        """The engine keeps the last few checkpoints (and the best); the list follows it."""
        with session_scope(self.url) as session:
            state.hold(session, self.job.pk, self.owner)
            refs = session.scalars(select(Checkpoint.adapter_path).where(
                Checkpoint.job_pk == self.job.pk, Checkpoint.step_number == step)).all()
            session.execute(delete(Checkpoint).where(Checkpoint.job_pk == self.job.pk, Checkpoint.step_number == step))
        for ref in refs:  # the published copy too (a remote store keeps it otherwise)
            self.jobs.delete_dir(ref)

    # --- data and results --------------------------------------------------------------------
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

    def last_checkpoint(self) -> tuple[int, Path] | None:
        """The newest checkpoint whose files are still in storage (fetched here when remote)."""
        with session_scope(self.url) as session:
            rows = session.execute(select(Checkpoint.step_number, Checkpoint.adapter_path)
                                   .where(Checkpoint.job_pk == self.job.pk)
                                   .order_by(Checkpoint.step_number.desc())).all()
        for step, ref in rows:
            try:
                return step, self.jobs.local_dir(ref)
            except FileNotFoundError:
                continue
        return None

    def results_file(self, metrics: list[dict], legacy_classification: dict | None = None) -> str:
        if self.job.legacy is not None:  # a legacy fine-tune: the legacy columns
            content = legacy_results.results_csv(metrics, legacy_classification)
        else:
            content = self._results_csv(metrics)
        return self._store_results(content)

    def _results_csv(self, metrics: list[dict]) -> bytes:
        return results_csv(metrics, self.job.method_type)

    def _store_results(self, content: bytes) -> str:
        file_id = new_id("file")
        key = f"{self.job.project.id}/{file_id}.csv"
        with self.storage.writer(key) as w:
            w.write(content)
            w.commit()
        with session_scope(self.url) as session:
            state.hold(session, self.job.pk, self.owner)
            session.add(File(id=file_id, project_pk=self.job.project_pk, filename="step_metrics.csv",
                             purpose="fine-tune-results", bytes=len(content), storage_key=key))
        return file_id

    def succeed(self, adapter_ref: str, trained_tokens: int, result_file: str) -> bool:
        with session_scope(self.url) as session:
            if not state.transition(session, self.job.pk, "succeeded", expected=["running"], owner=self.owner,
                                    fine_tuned_model=self.model_name, trained_tokens=trained_tokens,
                                    finished_at=now(), result_files=[result_file], estimated_finish=None):
                return False
            session.add(FineTunedModel(id=self.model_name, project_pk=self.job.project_pk, job_pk=self.job.pk,
                                       base_model=self.job.model, adapter_path=adapter_ref))
            add_event(session, self.job.pk, f"New fine-tuned model created: {self.model_name}")
            add_event(session, self.job.pk, "The job has successfully completed")
        return True

    def fail(self, error: dict) -> None:
        with session_scope(self.url) as session:
            if state.transition(session, self.job.pk, "failed", owner=self.owner, finished_at=now(), error=error,
                                estimated_finish=None):
                add_event(session, self.job.pk, f"Fine-tuning job failed: {error['message']}", level="error")


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
        _run(run)
    except state.LeaseLost:
        log.warning("job %s: lease lost to another worker; this run's results are dropped", job_id)
    except JobFailed as exc:
        run.fail(exc.error)
    except Exception as exc:  # the user sees a clear error; the log keeps the trace
        log.exception("job %s failed", job_id)
        run.fail({"code": "training_failed", "message": f"{type(exc).__name__}: {exc}"[:1000], "param": None})
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        run.release()
        if not run.waiting_for_slot:  # this run held a slot and has freed it
            wake_next(settings, job.project_pk)


def _on_sigterm(run: JobRun) -> Any:
    """In the process running the job, SIGTERM asks for a checkpoint and a hand-back instead of death."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: run.handoff.set())


def wake_next(settings: Settings, project_pk: int) -> None:
    """A slot may be free: send the oldest job of the project that waits in `queued` for one."""
    with session_scope(settings.resolved_database_url) as session:
        job_id = session.scalar(select(FineTuningJob.id).where(
            FineTuningJob.project_pk == project_pk, FineTuningJob.status == "queued",
            FineTuningJob.lease_owner.is_(None)).order_by(FineTuningJob.pk).limit(1))
    if job_id:
        send_job(settings, job_id)


def _validate(run: JobRun) -> tuple[Any, dict, Path, Path | None]:
    from worker.training import resolve_hyperparameters
    from worker.training.config import training_options

    job, first = run.job, run.job.status == "validating_files"
    if first:
        run.event(f"Validating training file: {job.training_file}")
    training_path, n_examples = run.data_path(job.training_file, "training_file")
    if n_examples < MIN_EXAMPLES:
        raise JobFailed("invalid_training_file", too_few_message(n_examples), "training_file")
    validation_path = None
    if job.validation_file:
        if first:
            run.event(f"Validating validation file: {job.validation_file}")
        validation_path, _ = run.data_path(job.validation_file, "validation_file")
    try:
        hyper = resolve_hyperparameters(job.hyperparameters, n_examples)
        options = training_options(job.hyperparameters, job.method_type)
    except ValueError as exc:
        raise JobFailed("invalid_hyperparameters", str(exc), "hyperparameters") from None
    return hyper, options, training_path, validation_path


def _run(run: JobRun) -> None:
    from worker.training import TrainingConfig, train

    job, settings = run.job, run.settings
    hyper, options, training_path, validation_path = _validate(run)
    if job.status == "validating_files":
        resolved = {**job.hyperparameters, "n_epochs": hyper.n_epochs, "batch_size": hyper.batch_size,
                    "learning_rate_multiplier": hyper.learning_rate_multiplier}
        if not run.move("queued", ["validating_files"], "Files validated, moving job to queued state",
                        resolved_hyperparameters=resolved):
            return
    with session_scope(run.url) as session:
        started = state.start_running(session, job, run.owner, settings.max_running_jobs_per_project,
                                      started_at=job.started_at or now())
        if not started:
            status = session.scalar(select(FineTuningJob.status).where(FineTuningJob.pk == job.pk))
            if status == "queued":
                state.hold(session, job.pk, run.owner)
                position = state.queue_position(session, job.pk)
                add_event(session, job.pk, f"Waiting for a slot: the project already runs "
                          f"{settings.max_running_jobs_per_project} job(s); queue position {position}",
                          data={"queue_position": position})
                session.execute(update(FineTuningJob).where(FineTuningJob.pk == job.pk)
                                .values(enqueued_at=time.time()))
                run.waiting_for_slot = True
            return
        resume = run.last_checkpoint()
        if resume:
            add_event(session, job.pk, f"Fine-tuning job resumed from the checkpoint at step {resume[0]}",
                      data={"step": resume[0]})
        else:
            add_event(session, job.pk, "Fine-tuning job started")
    base_dir = ensure_base_model(settings, job.model)
    if resume:
        options["resume_from"] = resume[1]
    if settings.checkpoint_every and "checkpoint_every" not in options:
        options["checkpoint_every"] = settings.checkpoint_every
    config = TrainingConfig(
        base_model_dir=base_dir, training_file=training_path, validation_file=validation_path,
        output_dir=run.workdir / "adapter", checkpoint_dir=run.workdir / "checkpoints",
        hyperparameters=hyper, seed=job.seed, **options,
    )
    with tracked(settings, job, run, resolved=vars(hyper)) as callbacks:  # wandb / MLflow, when the job or the settings ask
        result = train(config, callbacks)
    if result.stopped:
        status = run.status(max_age=0)
        if status == "paused":
            run.event(f"Fine-tuning job paused at step {result.steps}; resume continues from the last checkpoint",
                      data={"step": result.steps}, estimated_finish=None)
        elif status in state.TERMINAL:
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
