"""/v1/fine-tunes: the legacy fine-tunes API (openai 0.28's `openai api fine_tunes.*`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep
from app.core.config import Settings
from app.core.db import session_scope
from app.protocol.legacy import CreateFineTuneRequest, FineTune, FineTuneEventList, FineTuneList
from app.services import jobs as job_service
from app.services import legacy as service
from app.services.event_stream import follow_job_events
from app.services.queue import send_job
from app.services.stream_limits import limited_event_stream

router = APIRouter(prefix="/v1/fine-tunes", tags=["legacy fine-tunes"])


@router.post("", response_model=FineTune)
def create_fine_tune(body: CreateFineTuneRequest, caller: Caller = CallerDep,
                     settings: Settings = SettingsDep) -> FineTune:
    with session_scope(settings.resolved_database_url) as session:
        job = service.create_fine_tune(session, settings, caller, body)
        job_service.queued_event(session, job)
    send_job(settings, job.id)  # after the commit; with the broker down the reaper sends it later
    with session_scope(settings.resolved_database_url) as session:
        return service.to_wire(session, caller, service.get_fine_tune(session, caller, job.id), with_events=True)


@router.get("", response_model=FineTuneList)
def list_fine_tunes(caller: Caller = CallerDep, session: Session = SessionDep) -> FineTuneList:
    jobs = service.list_fine_tunes(session, caller)
    return FineTuneList(data=[service.to_wire(session, caller, j, with_events=False) for j in jobs])


@router.get("/{fine_tune_id}", response_model=FineTune)
def retrieve_fine_tune(fine_tune_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> FineTune:
    job = service.get_fine_tune(session, caller, fine_tune_id)
    return service.to_wire(session, caller, job, with_events=True)


@router.post("/{fine_tune_id}/cancel", response_model=FineTune)
def cancel_fine_tune(fine_tune_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> FineTune:
    job = job_service.cancel_job(session, caller, fine_tune_id)
    return service.to_wire(session, caller, job, with_events=True)


async def _legacy_sse(stream: AsyncIterator[str]) -> AsyncIterator[str]:
    """The job's SSE stream with each event in the legacy `fine-tune-event` shape."""
    async for chunk in stream:
        head, sep, data = chunk.partition("data: ")
        if not sep or data.strip() == "[DONE]":
            yield chunk
            continue
        event = json.loads(data)
        legacy = service.event_to_wire(event["created_at"], event["level"], event["message"])
        yield f"{head}data: {legacy.model_dump_json()}\n\n"


@router.get("/{fine_tune_id}/events", response_model=FineTuneEventList)
def list_fine_tune_events(request: Request, fine_tune_id: str, stream: bool = False, caller: Caller = CallerDep,
                          session: Session = SessionDep):
    job = service.get_fine_tune(session, caller, fine_tune_id)
    if stream:
        settings: Settings = request.app.state.settings
        return limited_event_stream(request, _legacy_sse(follow_job_events(settings, job.pk, 0,
                                                                           request.is_disconnected)))
    return FineTuneEventList(data=service.events_oldest_first(session, job))
