"""/v1/files"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, File, Form, Header, Query, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep, StorageDep
from app.core.config import Settings
from app.protocol.common import ListResponse
from app.protocol.files import FileDeleted, FileObject, FileValidation, ValidateFileRequest
from app.services import files as service
from app.services import idempotency
from app.services.storage import Storage

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
def upload_file(
    file: UploadFile = File(...),
    purpose: str = Form(...),
    caller: Caller = CallerDep,
    session: Session = SessionDep,
    storage: Storage = StorageDep,
    settings: Settings = SettingsDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> FileObject:
    key = idempotency.check_key(idempotency_key)
    if key:  # same key and same upload: the file stored the first time
        body_hash = idempotency.upload_digest(file.file, file.filename or "", purpose)
        existing = idempotency.lookup(session, caller, "file", key, body_hash)
        if existing:
            return service.to_wire(service.get_file(session, caller, existing))
    limits = service.UploadLimits.for_project(session, settings, caller)
    row = service.create_file(session, storage, caller, upload=file.file, filename=file.filename or "",
                              purpose=purpose, limits=limits)
    if key:
        try:
            idempotency.remember(session, caller, "file", key, body_hash, row.id)
        except IntegrityError:  # a concurrent retry with this key stored its file first: answer with that one
            service.discard_new_file(session, storage, caller, row)  # and take ours back, row and bytes
            return service.to_wire(service.get_file(session, caller,
                                                    idempotency.lookup(session, caller, "file", key, body_hash)))
    return service.to_wire(row)


@router.get("", response_model=ListResponse[FileObject])
def list_files(
    purpose: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    caller: Caller = CallerDep,
    session: Session = SessionDep,
) -> ListResponse[FileObject]:
    rows, has_more = service.list_files(session, caller, purpose=purpose, limit=limit, after=after, order=order)
    data = [service.to_wire(r) for r in rows]
    return ListResponse[FileObject](data=data, has_more=has_more,
                                    first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> FileObject:
    return service.to_wire(service.get_file(session, caller, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, caller: Caller = CallerDep, session: Session = SessionDep,
                storage: Storage = StorageDep) -> FileDeleted:
    service.delete_file(session, storage, caller, file_id)
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content")
def file_content(file_id: str, caller: Caller = CallerDep, session: Session = SessionDep,
                 storage: Storage = StorageDep) -> StreamingResponse:
    row, handle = service.open_content(session, storage, caller, file_id)
    media = "text/csv" if row.storage_key.endswith(".csv") else "application/jsonl"
    return StreamingResponse(service.iter_content(handle), media_type=media,
                             headers={"content-length": str(row.bytes)})


# --- file validation (issue 9) ---
@router.post("/{file_id}/validate", response_model=FileValidation)
def validate_file(file_id: str, body: ValidateFileRequest = Body(default_factory=ValidateFileRequest),
                  caller: Caller = CallerDep, session: Session = SessionDep, storage: Storage = StorageDep,
                  settings: Settings = SettingsDep) -> FileValidation:
    """The `whetstone prepare-data` checks on a stored file (errors were already refused at upload)."""
    return FileValidation(**service.validate_file(session, storage, settings, caller, file_id, model=body.model,
                                                  max_tokens=body.max_tokens))
