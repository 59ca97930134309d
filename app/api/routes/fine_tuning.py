"""/v1/fine_tuning/jobs"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep, caller_session
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
def create_job(body: CreateJobRequest, request: Request, settings: Settings = SettingsDep,
               idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> FineTuningJob:
    # One thread hop and one session for the caller and the job (deps.caller_session).
    key = idempotency.check_key(idempotency_key)
    body_hash = idempotency.digest([json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()])
    try:
        with caller_session(request) as (session, caller):
            existing = key and idempotency.lookup(session, caller, "fine_tuning.job", key, body_hash)
            if existing:
                return service.to_wire(service.get_job(session, caller, existing))
            job = service.create_job(session, settings, caller, body)
            service.queued_event(session, job)
            if key:
                idempotency.remember(session, caller, "fine_tuning.job", key, body_hash, job.id)
            answer = service.to_wire(job)  # as committed; the project is already in the session
    except IntegrityError:  # the same key, committed by a concurrent retry a moment ago
        with caller_session(request) as (session, caller):
            existing = key and idempotency.lookup(session, caller, "fine_tuning.job", key, body_hash)
            if not existing:
                raise
            return service.to_wire(service.get_job(session, caller, existing))
    # Only after the commit: a worker that picks the id up must find the row. With the broker down
    # the job stays stored and waiting; the workers' reaper sends it once the broker is back.
    send_job(settings, job.id)
    return answer


@router.get("", response_model=ListResponse[FineTuningJob])
async def list_jobs(request: Request, limit: int = Query(20, ge=1, le=100),
                    after: str | None = None) -> ListResponse[FineTuningJob]:
    metadata = metadata_filter(request.query_params.multi_items())
    return await run_in_threadpool(_list_jobs, request, limit, after, metadata)  # one thread hop (deps.caller_session)


def _list_jobs(request: Request, limit: int, after: str | None, metadata) -> ListResponse[FineTuningJob]:  # noqa: ANN001
    with caller_session(request) as (session, caller):
        rows, has_more = service.list_jobs(session, caller, limit=limit, after=after, metadata=metadata)
        return ListResponse[FineTuningJob](data=[service.to_wire(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
async def retrieve_job(request: Request, job_id: str) -> FineTuningJob:
    return await run_in_threadpool(_retrieve_job, request, job_id)


def _retrieve_job(request: Request, job_id: str) -> FineTuningJob:
    with caller_session(request) as (session, caller):
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
async def list_events(
    request: Request,
    job_id: str,
    limit: int = Query(20, ge=1, le=1000),
    after: str | None = None,
    stream: bool = False,
    last_event_id: str | None = Header(None),
):
    # One thread hop for the database work; a follower holds no database connection while it streams.
    page_or_pk = await run_in_threadpool(_events_page, request, job_id, limit, after, stream)
    if not stream:
        return page_or_pk
    since = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    # Per-key cap on open streams, a maximum lifetime, a send timeout (issue 16).
    return limited_event_stream(request, follow_job_events(request.app.state.settings, page_or_pk, since,
                                                           request.is_disconnected))


def _events_page(request: Request, job_id: str, limit: int, after: str | None,
                 stream: bool) -> ListResponse[JobEvent] | int:
    """A page of the job's events, newest first; for a stream, only the job's pk."""
    with caller_session(request) as (session, caller):
        job = service.get_job(session, caller, job_id)
        if stream:
            return job.pk
        after_pk = None
        if after:
            after_pk = event_service.event_pk(session, caller, job.pk, after)
            if after_pk is None:
                raise APIError(404, f"No such event: '{after}'", param="after")
        rows, has_more = event_service.events_newest_first(session, caller, job.pk, limit=limit,
                                                           after_pk=after_pk)
        return ListResponse[JobEvent](data=[event_service.to_wire(r) for r in rows], has_more=has_more)


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
