"""The database side of one job's run, as the holder of its lease.

The database owns the job; the broker message is only a hint. The worker first claims the job
(one conditional UPDATE taking a lease, worker/run_job.py), renews the lease from a heartbeat
thread while it works, and writes nothing once the lease is gone (app/services/job_state.py):
status moves, events, checkpoints, the result all check it (fencing). JobRun is also the
training loop's TrainingCallbacks: progress, cancel and pause (a worker's SIGTERM pauses too and
hands the job back).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from app.core.config import Settings
from app.core.db import session_scope
from app.core.ids import new_id, now
from app.models import Checkpoint, File, FineTunedModel, FineTuningJob
from app.services import job_state as state
from app.services.events import add_event
from app.services.jobs import fine_tuned_model_name, legacy_name_taken
from app.services.queue import send_job
from app.services.storage import storage_for

log = logging.getLogger("whetstone.worker")


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


class JobRun:
    """Database side of one job's run, as the holder of its lease: status moves, events,
    checkpoints, the result. Every write checks the lease (fencing)."""

    def __init__(self, settings: Settings, job: FineTuningJob, org: str, owner: str) -> None:
        self.settings = settings
        self.url = settings.resolved_database_url
        self.job = job
        self.owner = owner
        with session_scope(self.url) as session:
            taken = legacy_name_taken(session, job)
        self.model_name = fine_tuned_model_name(job, org, same_second_before=taken)
        self.workdir = settings.jobs_dir / job.id
        self.storage = storage_for(settings, "files")  # uploads and results
        self.jobs = storage_for(settings, "jobs")  # adapters and checkpoints, shared with the API
        self.lost = threading.Event()
        self.handoff = threading.Event()  # set by SIGTERM: checkpoint and give the job back
        self.waiting_for_slot = False  # the project's running-job limit was reached: the job waits
        self.quantization = "none"  # how the base is loaded for training; set from the config in _run
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
        # Resumed while we paused: someone must pick it up. A job that found no free slot is not sent
        # again here: the run that frees a slot sends it (wake_next). Nor is one handed back by a
        # worker shutting down, which could still take the message itself: it left `enqueued_at`
        # empty, and the reapers of the workers that stay (or start next) send it.
        if status == "queued" and not self.waiting_for_slot and not self.handoff.is_set():
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
        # issue 9: perplexity beside each validation loss (a language-model loss; not DPO's preference loss)
        if data and data.get("valid_loss") is not None and self.job.method_type != "dpo":
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
                      "to the queue", enqueued_at=None)
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
                                   model_id=model_id, adapter_path=ref, quantization=self.quantization))
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

    def succeed(self, adapter_ref: str, trained_tokens: int, result_file: str) -> bool:
        with session_scope(self.url) as session:
            if not state.transition(session, self.job.pk, "succeeded", expected=["running"], owner=self.owner,
                                    fine_tuned_model=self.model_name, trained_tokens=trained_tokens,
                                    finished_at=now(), result_files=[result_file], estimated_finish=None):
                return False
            session.add(FineTunedModel(id=self.model_name, project_pk=self.job.project_pk, job_pk=self.job.pk,
                                       base_model=self.job.model, adapter_path=adapter_ref,
                                       quantization=self.quantization))
            add_event(session, self.job.pk, f"New fine-tuned model created: {self.model_name}")
            add_event(session, self.job.pk, "The job has successfully completed")
        return True

    def fail(self, error: dict) -> None:
        with session_scope(self.url) as session:
            if state.transition(session, self.job.pk, "failed", owner=self.owner, finished_at=now(), error=error,
                                estimated_finish=None):
                add_event(session, self.job.pk, f"Fine-tuning job failed: {error['message']}", level="error")
