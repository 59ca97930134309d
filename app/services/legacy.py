"""The legacy fine-tunes API: a fine-tuning job seen through the old shapes.

A legacy create is a job create (same validation, same row, same worker) plus the legacy
knobs: n_epochs defaults to 4, prompt_loss_weight (default 0.01) goes into the stored
hyper-parameters for the trainer, and the classification-metrics options into `job.legacy`,
which also gives the job its legacy model name and results columns."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.config import Settings
from app.core.errors import invalid
from app.models import File, FineTuningJob, JobEvent
from app.protocol.files import FileObject
from app.protocol.fine_tuning import CreateJobRequest, Hyperparameters
from app.protocol.legacy import CreateFineTuneRequest, FineTune, FineTuneEvent
from app.services import files as file_service
from app.services import jobs as job_service
from app.services.scope import scoped

STATUS = {"validating_files": "pending", "queued": "pending", "paused": "pending", "running": "running",
          "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}


def _check_classification(request: CreateFineTuneRequest) -> None:
    if not request.compute_classification_metrics:
        return
    if not request.validation_file:
        raise invalid("compute_classification_metrics needs a validation_file to compute the metrics on.",
                      param="validation_file")
    binary = request.classification_n_classes in (None, 2)
    if binary and request.classification_positive_class is None:
        raise invalid("Binary classification metrics need classification_positive_class (set "
                      "classification_n_classes for more than 2 classes).", param="classification_positive_class")
    if not binary and request.classification_positive_class is not None:
        raise invalid("classification_positive_class is only for binary classification (2 classes).",
                      param="classification_positive_class")


def create_fine_tune(session: Session, settings: Settings, caller: Caller,
                     request: CreateFineTuneRequest) -> FineTuningJob:
    _check_classification(request)
    hyper = Hyperparameters(n_epochs=request.n_epochs, batch_size=request.batch_size or "auto",
                            learning_rate_multiplier=request.learning_rate_multiplier or "auto")
    job = job_service.create_job(session, settings, caller, CreateJobRequest(
        model=request.model, training_file=request.training_file, validation_file=request.validation_file,
        suffix=request.suffix, hyperparameters=hyper))
    job.hyperparameters = {**job.hyperparameters, "prompt_loss_weight": request.prompt_loss_weight}
    job.legacy = request.classification_options()
    session.flush()
    return job


def get_fine_tune(session: Session, caller: Caller, job_id: str) -> FineTuningJob:
    return job_service.get_job(session, caller, job_id)


def list_fine_tunes(session: Session, caller: Caller) -> list[FineTuningJob]:
    return list(session.scalars(scoped(FineTuningJob, caller)
                                .order_by(FineTuningJob.pk.asc())))


def events_oldest_first(session: Session, job: FineTuningJob) -> list[FineTuneEvent]:
    rows = session.scalars(scoped(JobEvent, job.project_pk).where(JobEvent.job_pk == job.pk).order_by(JobEvent.pk.asc()))
    return [event_to_wire(r.created_at, r.level, r.message) for r in rows]


def event_to_wire(created_at: int, level: str, message: str) -> FineTuneEvent:
    return FineTuneEvent(created_at=created_at, level=level, message=message)


def _files(session: Session, caller: Caller, ids: list[str]) -> list[FileObject]:
    rows = session.scalars(scoped(File, caller).where(File.id.in_(ids))) if ids else []
    by_id = {r.id: file_service.to_wire(r) for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def hyperparams(job: FineTuningJob) -> dict:
    requested = job.hyperparameters
    shown = {k: (None if v == "auto" else v) for k, v in requested.items()}
    shown.update(job.resolved_hyperparameters or {})
    shown.update(job.legacy or {})
    return shown


def to_wire(session: Session, caller: Caller, job: FineTuningJob, *, with_events: bool) -> FineTune:
    return FineTune(
        id=job.id, model=job.model, created_at=job.created_at,
        updated_at=max(t for t in (job.created_at, job.started_at, job.finished_at) if t is not None),
        fine_tuned_model=job.fine_tuned_model, hyperparams=hyperparams(job), organization_id=caller.project_id,
        status=STATUS.get(job.status, "pending"), training_files=_files(session, caller, [job.training_file]),
        validation_files=_files(session, caller, [job.validation_file] if job.validation_file else []),
        result_files=_files(session, caller, list(job.result_files or [])),
        events=events_oldest_first(session, job) if with_events else None,
    )
