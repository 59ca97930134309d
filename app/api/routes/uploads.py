"""/v1/uploads"""

from __future__ import annotations

from fastapi import APIRouter, File, UploadFile
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep, StorageDep
from app.core.config import Settings
from app.protocol.uploads import CompleteUploadRequest, CreateUploadRequest, UploadObject, UploadPartObject
from app.services import uploads as service
from app.services.storage import Storage

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post("", response_model=UploadObject)
def create_upload(body: CreateUploadRequest, caller: Caller = CallerDep, session: Session = SessionDep,
                  settings: Settings = SettingsDep) -> UploadObject:
    return service.to_wire(session, service.create_upload(session, settings, caller, body))


@router.post("/{upload_id}/parts", response_model=UploadPartObject)
def add_part(upload_id: str, data: UploadFile = File(...), caller: Caller = CallerDep,
             session: Session = SessionDep, storage: Storage = StorageDep,
             settings: Settings = SettingsDep) -> UploadPartObject:
    part, upload = service.add_part(session, storage, settings, caller, upload_id, data.file)
    return service.part_to_wire(part, upload)


@router.post("/{upload_id}/complete", response_model=UploadObject)
def complete_upload(upload_id: str, body: CompleteUploadRequest, caller: Caller = CallerDep,
                    session: Session = SessionDep, storage: Storage = StorageDep,
                    settings: Settings = SettingsDep) -> UploadObject:
    return service.to_wire(session, service.complete_upload(session, storage, settings, caller, upload_id, body))


@router.post("/{upload_id}/cancel", response_model=UploadObject)
def cancel_upload(upload_id: str, caller: Caller = CallerDep, session: Session = SessionDep,
                  storage: Storage = StorageDep) -> UploadObject:
    return service.to_wire(session, service.cancel_upload(session, storage, caller, upload_id))
