"""/v1/files"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep, StorageDep, caller_session
from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import invalid
from app.core.http_protocol import INTO
from app.protocol.common import ListResponse
from app.protocol.files import FileDeleted, FileObject, FileValidation, ValidateFileRequest
from app.services import files as service
from app.services import idempotency
from app.services.multipart_stream import Form, read_form
from app.services.storage import Storage

router = APIRouter(prefix="/v1/files", tags=["files"])


# The form, for the OpenAPI schema: the route reads the body itself (app/services/multipart_stream.py).
_UPLOAD_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}}}}}}}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_FORM)
async def upload_file(
    request: Request,
    caller: Caller = CallerDep,
    storage: Storage = StorageDep,
    settings: Settings = SettingsDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> FileObject:
    """Multipart `file` and `purpose`. The file is checked and stored while it arrives, a block at a
    time in a worker thread: never spooled to a temporary file, never whole in memory."""
    key = idempotency.check_key(idempotency_key)
    limits = await run_in_threadpool(_limits, settings, caller, key)  # 413 at once for a project over its quota
    file_id, storage_key = service.new_file(caller)
    writer = storage.writer(storage_key)
    await run_in_threadpool(writer.__enter__)
    sink = None
    try:
        sink = await run_in_threadpool(service.FileSink, writer, limits, digest=bool(key),  # (may start a process)
                                       expected_bytes=_content_length(request),
                                       check_processes=settings.resolved_upload_check_processes)

        def purpose_first(form: Form) -> None:  # sent before the file (as the SDKs do): refuse at once
            if "purpose" in form.fields:
                service.check_purpose(form.fields["purpose"])

        form = await read_form(request.headers.get("content-type", ""), request.stream(), "file", sink.lanes,
                               purpose_first, into=request.scope.get("extensions", {}).get(INTO))
        purpose = form.fields.get("purpose")
        if purpose is None:
            raise invalid("Invalid value for 'purpose': Field required", param="purpose", code="invalid_value")
        service.check_purpose(purpose)
        if form.filename is None:
            raise invalid("Invalid value for 'file': Field required", param="file", code="invalid_value")
        if form.error is not None:
            raise form.error
        return await run_in_threadpool(_store_upload, settings, storage, caller, sink, file_id, storage_key,
                                       form.filename, purpose, key)
    finally:
        if sink is not None:
            await run_in_threadpool(sink.close)
        await run_in_threadpool(writer.__exit__, None, None, None)


def _content_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length", "0"))
    except ValueError:
        return 0


def _limits(settings: Settings, caller: Caller, key: str | None) -> service.UploadLimits:
    with session_scope(settings.resolved_database_url) as session:
        retry = bool(key) and idempotency.known(session, caller, "file", key)
        return service.UploadLimits.for_project(session, settings, caller, retry=retry)


def _store_upload(settings: Settings, storage: Storage, caller: Caller, sink: service.FileSink, file_id: str,
                  storage_key: str, filename: str, purpose: str, key: str | None) -> FileObject:
    summary = sink.finish()
    with session_scope(settings.resolved_database_url) as session:
        if key:  # same key and same upload: the file stored the first time
            body_hash = idempotency.upload_digest_of(sink.sha256.digest(), filename, purpose)
            existing = idempotency.lookup(session, caller, "file", key, body_hash)
            if existing:
                return service.to_wire(service.get_file(session, caller, existing))
        row = service.file_row(caller, file_id, storage_key, filename, purpose, sink.writer.bytes, summary)
        try:
            if key:  # the key's row commits with the file's: neither exists without the other
                idempotency.remember(session, caller, "file", key, body_hash, file_id)
            service.commit_with_file(session, storage, sink.writer, storage_key, row)
        except IntegrityError:
            if not key:
                raise
            session.rollback()  # a concurrent retry with this key stored its file first: answer with that one
            existing = idempotency.lookup(session, caller, "file", key, body_hash)
            if existing is None:
                raise
            return service.to_wire(service.get_file(session, caller, existing))
        return service.to_wire(row)


@router.get("", response_model=ListResponse[FileObject])
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> ListResponse[FileObject]:
    return await run_in_threadpool(_list_files, request, purpose, limit, after, order)  # one thread hop (deps.caller_session)


def _list_files(request: Request, purpose: str | None, limit: int, after: str | None,
                order: str) -> ListResponse[FileObject]:
    with caller_session(request) as (session, caller):
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
