"""Fine-tuning jobs: create (validated, then enqueued after commit), list, retrieve, cancel."""

from __future__ import annotations

import importlib.util
import random
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.config import Settings
from app.core.errors import APIError, invalid, not_found
from app.core.ids import new_id, now
from app.models import Checkpoint, File, FineTunedModel, FineTuningJob, Project
from app.protocol.fine_tuning import CreateJobRequest, DpoHyperparameters, Hyperparameters, JobCheckpoint, JobError
from app.protocol.fine_tuning import FineTuningJob as FineTuningJobWire
from app.services.base_models import find_base_model, refuse_unsafe
from app.services.files import get_file
from app.services import job_state as state
from app.services.events import add_event
from app.services.scope import owned, scoped
from worker.training.config import DEFAULT_DPO_BETA

TERMINAL = state.TERMINAL


def short_id(job_id: str) -> str:
    return job_id.removeprefix("ftjob-")[:8]


def fine_tuned_model_name(job: FineTuningJob, org: str, *, same_second_before: bool = False) -> str:
    """`same_second_before`: a legacy job of this project, model and suffix was created earlier in the
    same second (`legacy_name_taken`); the legacy name would be that job's, so its short id is added."""
    if job.legacy is not None:  # created through /v1/fine-tunes: the legacy name
        stamp = datetime.fromtimestamp(job.created_at, timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
        name = f"{job.model}:ft-{org}:{job.suffix}-{stamp}" if job.suffix else f"{job.model}:ft-{org}-{stamp}"
        return f"{name}-{short_id(job.id)}" if same_second_before else name
    return f"ft:{job.model}:{org}:{job.suffix or ''}:{short_id(job.id)}"


def legacy_name_taken(session: Session, job: FineTuningJob) -> bool:
    """Whether an earlier legacy job would have this one's legacy model name (same project, model,
    suffix and creation second): decided by the rows alone, so every run of the job agrees."""
    if job.legacy is None:
        return False
    earlier = session.scalars(scoped(FineTuningJob, job.project_pk, FineTuningJob.legacy).where(
        FineTuningJob.model == job.model,
        FineTuningJob.suffix.is_not_distinct_from(job.suffix), FineTuningJob.created_at == job.created_at,
        FineTuningJob.pk < job.pk))
    return any(legacy is not None for legacy in earlier)  # (a JSON column: None may be stored as JSON null)


def to_wire(job: FineTuningJob) -> FineTuningJobWire:
    hyper = job.resolved_hyperparameters or job.hyperparameters
    return FineTuningJobWire(
        id=job.id, created_at=job.created_at, error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model, finished_at=job.finished_at, hyperparameters=hyper,
        model=job.model, organization_id=job.project.id, result_files=list(job.result_files or []),
        status=job.status, estimated_finish=job.estimated_finish, trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file, seed=job.seed,
        method={"type": job.method_type, job.method_type: {"hyperparameters": hyper}}, metadata=job.job_metadata,
        integrations=job.integrations,
    )


def _training_data(session: Session, caller: Caller, file_id: str, param: str) -> File:
    try:
        row = get_file(session, caller, file_id)
    except APIError:  # the request body named it: a 400 on that field, not a 404 of the URL
        raise invalid(f"invalid {param}: no file '{file_id}' in this project", param=param,
                      code=f"invalid_{param}") from None
    if row.purpose != "fine-tune":
        raise invalid(f"invalid {param}: file '{file_id}' has purpose '{row.purpose}', expected 'fine-tune'",
                      param=param, code=f"invalid_{param}")
    return row


def _requested_hyperparameters(request: CreateJobRequest) -> Hyperparameters:
    method = request.method
    kind = method.type if method else "supervised"
    other = "dpo" if kind == "supervised" else "supervised"
    if method and getattr(method, other) is not None:
        raise invalid(f"method.{other} was given but method.type is '{kind}'.", param=f"method.{other}")
    block = getattr(method, kind) if method else None
    method_hp = block.hyperparameters if block else None
    if request.hyperparameters and method_hp:
        raise invalid(f"Give hyperparameters either at the top level or in method.{kind}, not both.",
                      param="hyperparameters")
    if kind == "dpo":
        requested = method_hp or DpoHyperparameters(**(request.hyperparameters or Hyperparameters()).model_dump())
        if requested.prompt_loss_weight:
            raise invalid("prompt_loss_weight does not apply to the dpo method: only the replies are compared.",
                          param="method.dpo.hyperparameters.prompt_loss_weight")
        if requested.beta == "auto":  # does not depend on the data: resolved now
            requested = requested.model_copy(update={"beta": DEFAULT_DPO_BETA})
        return requested
    return method_hp or request.hyperparameters or Hyperparameters()


def _check_method_data(kind: str, training: File) -> None:
    """DPO trains on preference pairs, the supervised method on chat or prompt/completion examples."""
    if kind == "dpo" and training.data_format != "preference":
        raise invalid(f"invalid training_file: method 'dpo' needs a file in the preference format (input, "
                      f"preferred_output, non_preferred_output); '{training.id}' is in {training.data_format} format.",
                      param="training_file", code="invalid_training_file")
    if kind != "dpo" and training.data_format == "preference":
        raise invalid(f"invalid training_file: '{training.id}' is in the preference format, which trains with "
                      f"method.type 'dpo'.", param="training_file", code="invalid_training_file")


def tracker_installed(name: str) -> bool:
    """Is the tracker's package (the optional `tracking` extra) importable here?"""
    return importlib.util.find_spec(name) is not None


def _integrations(request: CreateJobRequest) -> list[dict] | None:
    """The integrations as OpenAI echoes them; a tracker that is not installed here is a 400."""
    if not request.integrations:
        return None
    for i, integration in enumerate(request.integrations):
        if not tracker_installed(integration.type):
            raise invalid(f"The {integration.type} integration is not available on this server (install "
                          f"whetstone[tracking]).", param=f"integrations[{i}]", code="integration_not_available")
    return [integration.model_dump() for integration in request.integrations]


def create_job(session: Session, settings: Settings, caller: Caller, request: CreateJobRequest) -> FineTuningJob:
    base = find_base_model(settings, request.model)
    if base is None:
        raise invalid(f"Model '{request.model}' is not available for fine-tuning or does not exist.",
                      param="model", code="model_not_available")
    refuse_unsafe(base)
    integrations = _integrations(request)
    kind = request.method.type if request.method else "supervised"
    training = _training_data(session, caller, request.training_file, "training_file")
    _check_method_data(kind, training)
    if request.validation_file:
        validation = _training_data(session, caller, request.validation_file, "validation_file")
        if validation.data_format != training.data_format:
            raise invalid(f"validation_file is in {validation.data_format} format but training_file is in "
                          f"{training.data_format} format", param="validation_file", code="invalid_validation_file")
    hyperparameters = _requested_hyperparameters(request).model_dump(exclude_none=True)
    if hyperparameters.get("early_stopping_patience") and not request.validation_file:
        raise invalid("early_stopping_patience needs a validation_file to measure validation loss.",
                      param="hyperparameters.early_stopping_patience")
    _check_queued_quota(session, settings, caller)
    job = FineTuningJob(
        id=new_id("ftjob"), project_pk=caller.project_pk, model=request.model, training_file=training.id,
        validation_file=request.validation_file, suffix=request.suffix or None,
        seed=request.seed if request.seed is not None else random.randrange(2**31),
        hyperparameters=hyperparameters, status="validating_files",
        result_files=[], job_metadata=request.metadata, method_type=kind, integrations=integrations,
        project=session.get(Project, caller.project_pk),  # authentication loaded it: no query, none for to_wire
    )
    session.add(job)
    session.flush()
    add_event(session, job.pk, f"Created fine-tuning job: {job.id}", first=True)
    return job


def _check_queued_quota(session: Session, settings: Settings, caller: Caller) -> None:
    """429 when the project already has max_queued_jobs_per_project jobs waiting to run
    (max_running_jobs_per_project bounds the running ones; the rest wait in `queued`). Paused jobs
    count too: each comes back to the queue on resume, so pausing frees no place."""
    limit = settings.max_queued_jobs_per_project
    if limit <= 0:
        return
    waiting = session.scalar(scoped(FineTuningJob, caller, func.count())
                             .where(FineTuningJob.status.in_(state.WAITING + ("paused",))))
    if waiting >= limit:
        raise APIError(429, f"This project already has {waiting} fine-tuning jobs waiting to run (the limit is "
                       f"{limit}); wait for some to start or cancel them.", type="rate_limit_error",
                       code="too_many_queued_jobs")


def get_job(session: Session, caller: Caller, job_id: str) -> FineTuningJob:
    return owned(session, FineTuningJob, caller, job_id, kind="fine-tuning job")


def list_jobs(session: Session, caller: Caller, *, limit: int, after: str | None,
              metadata: dict[str, str] | None = None) -> tuple[list[FineTuningJob], bool]:
    query = scoped(FineTuningJob, caller)
    for key, value in (metadata or {}).items():  # metadata[key]=value: every pair must match
        query = query.where(FineTuningJob.job_metadata[key].as_string() == value)
    if after:
        query = query.where(FineTuningJob.pk < get_job(session, caller, after).pk)
    rows = list(session.scalars(query.order_by(FineTuningJob.pk.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _user_move(session: Session, caller: Caller, job_id: str, new: str, event: str, refusal: str, code: str,
               **values: object) -> FineTuningJob:
    """A move the user asked for: one conditional UPDATE (state.transition), an event, or a 400
    (``refusal`` formatted with the job's id and status) when the job is not in a state that allows it."""
    job = get_job(session, caller, job_id)
    was_waiting = job.status in state.WAITING and job.lease_owner is None
    if not state.transition(session, job.pk, new, **values):
        session.refresh(job)
        raise APIError(400, refusal.format(id=job.id, status=job.status), param="fine_tuning_job_id", code=code)
    add_event(session, job.pk, event)
    if was_waiting and new not in state.WAITING:
        announce_queue_positions(session, job.pk)
    session.flush()
    session.refresh(job)
    return job


def cancel_job(session: Session, caller: Caller, job_id: str) -> FineTuningJob:
    # One conditional UPDATE: a worker finishing at the same moment cannot be overwritten, nor overwrite us.
    # The worker sees `cancelled` before its next optimizer step and stops.
    return _user_move(session, caller, job_id, "cancelled", "Fine-tuning job cancelled by the user",
                      "Job {id} has already {status} and cannot be cancelled.", "job_not_cancellable",
                      finished_at=now(), estimated_finish=None)


def pause_job(session: Session, caller: Caller, job_id: str) -> FineTuningJob:
    """running/queued -> paused. A running job's worker sees it before its next step, saves a
    checkpoint there and frees itself; resume continues from that checkpoint."""
    return _user_move(session, caller, job_id, "paused", "Fine-tuning job paused by the user",
                      "Job {id} is {status} and cannot be paused.", "job_not_pausable",
                      expected=["validating_files", "queued", "running"], estimated_finish=None)


def resume_job(session: Session, caller: Caller, job_id: str) -> FineTuningJob:
    """paused -> queued; the caller sends the job to the workers after the commit."""
    return _user_move(session, caller, job_id, "queued",
                      "Fine-tuning job resumed by the user; it continues from its last checkpoint",
                      "Job {id} is {status}; only a paused job can be resumed.", "job_not_resumable",
                      expected=["paused"], enqueued_at=None)


def _position_event(session: Session, job_pk: int, position: int) -> None:
    add_event(session, job_pk, f"Job is at position {position} in the queue", data={"queue_position": position})


def queued_event(session: Session, job: FineTuningJob) -> None:
    _position_event(session, job.pk, state.queue_position(session, job.pk))


ANNOUNCED_BEHIND = 100  # jobs further back hear their position at a later move


def announce_queue_positions(session: Session, left_pk: int) -> None:
    """The waiting job `left_pk` left the queue (it started, or was cancelled or paused): every job
    waiting behind it moved up one place; each gets an event with its new position."""
    behind = list(session.scalars(select(FineTuningJob.pk).where(
        FineTuningJob.status.in_(state.WAITING), FineTuningJob.pk > left_pk, FineTuningJob.lease_owner.is_(None))
        .order_by(FineTuningJob.pk).limit(ANNOUNCED_BEHIND)))
    if behind:
        first = state.queue_position(session, behind[0])
        for offset, pk in enumerate(behind):
            _position_event(session, pk, first + offset)


def adapter_of(session: Session, caller: Caller, job: FineTuningJob) -> str | None:
    """Where the job's fine-tuned model's adapter is stored (None before it has one)."""
    return session.scalar(scoped(FineTunedModel, caller, FineTunedModel.adapter_path)
                          .where(FineTunedModel.job_pk == job.pk))


def checkpoint_to_wire(row: Checkpoint, job: FineTuningJob) -> JobCheckpoint:
    return JobCheckpoint(id=row.id, created_at=row.created_at, fine_tuned_model_checkpoint=row.model_id,
                         fine_tuning_job_id=job.id, step_number=row.step_number,
                         metrics={k: float(v) for k, v in row.metrics.items() if v is not None})


def list_checkpoints(session: Session, caller: Caller, job: FineTuningJob, *, limit: int,
                     after: str | None) -> tuple[list[Checkpoint], bool]:
    query = scoped(Checkpoint, caller).where(Checkpoint.job_pk == job.pk)
    if after:
        cursor = owned(session, Checkpoint, caller, after, kind="checkpoint", param="after")
        if cursor.job_pk != job.pk:
            raise not_found("checkpoint", after, param="after")
        query = query.where(Checkpoint.pk < cursor.pk)
    rows = list(session.scalars(query.order_by(Checkpoint.pk.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
