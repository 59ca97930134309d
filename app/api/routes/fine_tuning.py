"""/v1/fine_tuning/jobs"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep
from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import APIError
from app.protocol.common import ListResponse
from app.protocol.fine_tuning import CreateJobRequest, FineTuningJob, JobCheckpoint, JobEvent
from app.services import events as event_service
from app.services import idempotency
from app.services import jobs as service
from app.services.event_stream import follow_job_events
from app.services.stream_limits import limited_event_stream
from app.services.job_metadata import metadata_filter
from app.services.queue import send_job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
log = logging.getLogger("whetstone.jobs")


@router.post("", response_model=FineTuningJob)
def create_job(body: CreateJobRequest, request: Request, caller: Caller = CallerDep,
               settings: Settings = SettingsDep,
               idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> FineTuningJob:
    url = settings.resolved_database_url
    key = idempotency.check_key(idempotency_key)
    body_hash = idempotency.digest([json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()])
    try:
        with session_scope(url) as session:
            existing = key and idempotency.lookup(session, caller, "fine_tuning.job", key, body_hash)
            if existing:
                return service.to_wire(service.get_job(session, caller, existing))
            job = service.create_job(session, settings, caller, body)
            service.queued_event(session, job)
            if key:
                idempotency.remember(session, caller, "fine_tuning.job", key, body_hash, job.id)
    except IntegrityError:  # the same key, committed by a concurrent retry a moment ago
        with session_scope(url) as session:
            existing = key and idempotency.lookup(session, caller, "fine_tuning.job", key, body_hash)
            if not existing:
                raise
            return service.to_wire(service.get_job(session, caller, existing))
    # Only after the commit: a worker that picks the id up must find the row. With the broker down
    # the job stays stored and waiting; the workers' reaper sends it once the broker is back.
    send_job(settings, job.id)
    with session_scope(url) as session:
        return service.to_wire(service.get_job(session, caller, job.id))


@router.get("", response_model=ListResponse[FineTuningJob])
def list_jobs(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None,
              caller: Caller = CallerDep, session: Session = SessionDep) -> ListResponse[FineTuningJob]:
    metadata = metadata_filter(request.query_params.multi_items())
    rows, has_more = service.list_jobs(session, caller, limit=limit, after=after, metadata=metadata)
    return ListResponse[FineTuningJob](data=[service.to_wire(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> FineTuningJob:
    return service.to_wire(service.get_job(session, caller, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> FineTuningJob:
    return service.to_wire(service.cancel_job(session, caller, job_id))


@router.post("/{job_id}/pause", response_model=FineTuningJob)
def pause_job(job_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> FineTuningJob:
    return service.to_wire(service.pause_job(session, caller, job_id))


@router.post("/{job_id}/resume", response_model=FineTuningJob)
def resume_job(job_id: str, caller: Caller = CallerDep, settings: Settings = SettingsDep) -> FineTuningJob:
    with session_scope(settings.resolved_database_url) as session:
        job = service.resume_job(session, caller, job_id)
    send_job(settings, job.id)
    with session_scope(settings.resolved_database_url) as session:
        return service.to_wire(service.get_job(session, caller, job_id))


@router.get("/{job_id}/events", response_model=ListResponse[JobEvent])
def list_events(
    request: Request,
    job_id: str,
    limit: int = Query(20, ge=1, le=1000),
    after: str | None = None,
    stream: bool = False,
    last_event_id: str | None = Header(None),
    caller: Caller = CallerDep,
    settings: Settings = SettingsDep,
):
    # A short session of its own: a follower must not hold a database connection while it streams.
    with session_scope(settings.resolved_database_url) as session:
        job = service.get_job(session, caller, job_id)
        if not stream:
            after_pk = None
            if after:
                after_pk = event_service.event_pk(session, caller, job.pk, after)
                if after_pk is None:
                    raise APIError(404, f"No such event: '{after}'", param="after")
            rows, has_more = event_service.events_newest_first(session, caller, job.pk, limit=limit, after_pk=after_pk)
            return ListResponse[JobEvent](data=[event_service.to_wire(r) for r in rows], has_more=has_more)
    since = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    # Per-key cap on open streams, a maximum lifetime, a send timeout (issue 16).
    return limited_event_stream(request, follow_job_events(settings, job.pk, since, request.is_disconnected))


@router.get("/{job_id}/checkpoints", response_model=ListResponse[JobCheckpoint])
def list_checkpoints(job_id: str, limit: int = Query(10, ge=1, le=100), after: str | None = None,
                     caller: Caller = CallerDep, session: Session = SessionDep) -> ListResponse[JobCheckpoint]:
    job = service.get_job(session, caller, job_id)
    rows, has_more = service.list_checkpoints(session, caller, job, limit=limit, after=after)
    data = [service.checkpoint_to_wire(r, job) for r in rows]
    return ListResponse[JobCheckpoint](data=data, has_more=has_more, first_id=data[0].id if data else None,
                                       last_id=data[-1].id if data else None)


@router.get("/{job_id}/export")
def export_model(job_id: str, kind: str = Query("adapter", pattern="^(adapter|merged)$"), caller: Caller = CallerDep,
                 session: Session = SessionDep, settings: Settings = SettingsDep) -> FileResponse:
    """The fine-tuned model as a zip of safetensors: ``kind=adapter`` (PEFT adapter) or ``merged``
    (the base model with the adapter merged in, loadable with transformers alone)."""
    from app.services.export import export_archive

    job = service.get_job(session, caller, job_id)
    adapter_ref = service.adapter_of(session, caller, job)
    archive = export_archive(settings, job, kind, adapter_ref if job.status == "succeeded" else None)
    name = f"{job.fine_tuned_model.replace(':', '_')}-{kind}.zip"
    return FileResponse(archive, media_type="application/zip", filename=name)
