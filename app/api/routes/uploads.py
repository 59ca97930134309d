"""/v1/uploads"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep, StorageDep
from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import invalid
from app.protocol.uploads import CompleteUploadRequest, CreateUploadRequest, UploadObject, UploadPartObject
from app.services import uploads as service
from app.services.multipart_stream import read_form
from app.services.storage import Storage

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post("", response_model=UploadObject)
def create_upload(body: CreateUploadRequest, caller: Caller = CallerDep, session: Session = SessionDep,
                  settings: Settings = SettingsDep) -> UploadObject:
    return service.to_wire(session, service.create_upload(session, settings, caller, body))


_PART_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {"type": "string", "format": "binary"}}}}}}}


@router.post("/{upload_id}/parts", response_model=UploadPartObject, openapi_extra=_PART_FORM)
async def add_part(upload_id: str, request: Request, caller: Caller = CallerDep, storage: Storage = StorageDep,
                   settings: Settings = SettingsDep) -> UploadPartObject:
    """Multipart `data`: stored while it arrives, a block at a time in a worker thread (as
    `POST /v1/files` does), never spooled to a temporary file first."""
    url = settings.resolved_database_url
    room = await run_in_threadpool(_in_session, url, lambda session: service.part_room(session, settings, caller,
                                                                                         upload_id))
    part_id, key = service.new_part(caller, room.upload_id)
    writer = storage.writer(key)
    await run_in_threadpool(writer.__enter__)
    try:
        form = await read_form(request.headers.get("content-type", ""), request.stream(), "data",
                               [service.PartSink(writer, room).feed])
        if form.filename is None:
            raise invalid("Invalid value for 'data': Field required", param="data", code="invalid_value")
        if form.error is not None:
            raise form.error
        part, upload = await run_in_threadpool(_in_session, url, lambda session: service.store_part(
            session, storage, caller, room, part_id, key, writer))
        return service.part_to_wire(part, upload)
    finally:
        await run_in_threadpool(writer.__exit__, None, None, None)


def _in_session(url: str, step):
    with session_scope(url) as session:
        return step(session)


@router.post("/{upload_id}/complete", response_model=UploadObject)
def complete_upload(upload_id: str, body: CompleteUploadRequest, caller: Caller = CallerDep,
                    session: Session = SessionDep, storage: Storage = StorageDep,
                    settings: Settings = SettingsDep) -> UploadObject:
    return service.to_wire(session, service.complete_upload(session, storage, settings, caller, upload_id, body))


@router.post("/{upload_id}/cancel", response_model=UploadObject)
def cancel_upload(upload_id: str, caller: Caller = CallerDep, session: Session = SessionDep,
                  storage: Storage = StorageDep) -> UploadObject:
    return service.to_wire(session, service.cancel_upload(session, storage, caller, upload_id))
