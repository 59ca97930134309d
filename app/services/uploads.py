"""Uploads: a file sent in parts, each streamed to storage as it arrives (`PartSink`, fed by the
route from the request body); completing it streams the parts, in the order the client gives,
through the same validation as a single-request upload (`files.create_file`), so the file is never
held in memory and a bad file leaves nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import func
from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.config import Settings
from app.core.errors import APIError, invalid
from app.core.ids import new_id, now
from app.models import File, Upload, UploadPart
from app.protocol.uploads import CompleteUploadRequest, CreateUploadRequest, UploadObject, UploadPartObject
from app.services import files as file_service
from app.services.scope import owned, scoped
from app.services.storage import CHUNK, Storage


def to_wire(session: Session, row: Upload) -> UploadObject:
    file = session.scalar(scoped(File, row.project_pk).where(File.id == row.file_id)) if row.file_id else None
    return UploadObject(id=row.id, bytes=row.bytes, created_at=row.created_at, expires_at=row.expires_at,
                        filename=row.filename, purpose=row.purpose, status=row.status,
                        file=file_service.to_wire(file) if file else None)


def part_to_wire(part: UploadPart, upload: Upload) -> UploadPartObject:
    return UploadPartObject(id=part.id, created_at=part.created_at, upload_id=upload.id)


def create_upload(session: Session, settings: Settings, caller: Caller, request: CreateUploadRequest) -> Upload:
    file_service.check_purpose(request.purpose)
    if request.bytes > settings.max_upload_total_bytes:
        raise invalid(f"An upload may hold at most {settings.max_upload_total_bytes} bytes.", param="bytes",
                      code="upload_too_large")
    row = Upload(id=new_id("upload"), project_pk=caller.project_pk, filename=request.filename,
                 purpose=request.purpose, mime_type=request.mime_type, bytes=request.bytes, status="pending",
                 expires_at=now() + settings.upload_expires_seconds)
    session.add(row)
    session.flush()
    return row


def get_upload(session: Session, caller: Caller, upload_id: str) -> Upload:
    return owned(session, Upload, caller, upload_id, kind="upload")


def _pending(session: Session, caller: Caller, upload_id: str, *, lock: bool = False) -> Upload:
    row = owned(session, Upload, caller, upload_id, kind="upload", lock=lock)
    if row.status == "pending" and now() > row.expires_at:
        row.status = "expired"
        session.commit()
    if row.status != "pending":
        raise invalid(f"Upload {row.id} is {row.status}; only a pending upload can take parts or complete.",
                      param="upload_id", code="upload_not_pending")
    return row


def _parts(session: Session, upload: Upload) -> list[UploadPart]:
    return list(session.scalars(scoped(UploadPart, upload.project_pk).where(UploadPart.upload_pk == upload.pk)))


@dataclass(frozen=True)
class PartRoom:
    """What a new part of a pending upload may add: read before its bytes come, held to while they do."""
    upload_id: str
    received: int  # bytes of the upload's parts so far
    declared: int  # the upload's `bytes`
    used: int  # the project's stored bytes (0 without a quota)
    quota: int  # 0: none
    max_part: int


def part_room(session: Session, settings: Settings, caller: Caller, upload_id: str) -> PartRoom:
    upload = _pending(session, caller, upload_id)
    received = session.scalar(scoped(UploadPart, caller, func.coalesce(func.sum(UploadPart.bytes), 0))
                              .where(UploadPart.upload_pk == upload.pk))
    quota = settings.max_storage_bytes_per_project
    used = file_service.project_storage_bytes(session, caller.project_pk) if quota > 0 else 0
    if quota > 0 and used >= quota:
        raise file_service.quota_exceeded(quota, param="data")
    return PartRoom(upload.id, received, upload.bytes, used, quota, settings.max_upload_part_bytes)


def new_part(caller: Caller, upload_id: str) -> tuple[str, str]:
    """A new part's id and storage key."""
    part_id = new_id("part")
    return part_id, f"{caller.project_id}/uploads/{upload_id}/{part_id}"


class PartSink:
    """A part's bytes, in blocks, to storage: 413 past the part limit or the project's quota, 400 past
    the bytes the upload declared. Nothing of it is kept unless `store_part` commits it."""

    def __init__(self, writer, room: PartRoom) -> None:
        self.writer, self.room = writer, room

    def feed(self, block: bytes) -> None:
        self.writer.write(block)
        room, size = self.room, self.writer.bytes
        if size > room.max_part:
            raise APIError(413, f"A part may hold at most {room.max_part} bytes.", param="data", code="part_too_large")
        if room.quota > 0 and room.used + size > room.quota:
            raise file_service.quota_exceeded(room.quota, param="data")
        if room.received + size > room.declared:
            raise invalid(f"The parts exceed the {room.declared} bytes declared for upload {room.upload_id}.",
                          param="data", code="upload_size_exceeded")


def store_part(session: Session, storage: Storage, caller: Caller, room: PartRoom, part_id: str, key: str,
               writer) -> tuple[UploadPart, Upload]:
    """The part's row and file, committed together, if its upload is still pending."""
    upload = _pending(session, caller, room.upload_id)
    if writer.bytes == 0:
        raise invalid("A part must not be empty.", param="data", code="empty_part")
    part = UploadPart(id=part_id, upload_pk=upload.pk, bytes=writer.bytes, storage_key=key)
    file_service.commit_with_file(session, storage, writer, key, part)
    return part, upload


class PartsReader:
    """The parts, one after another, as one binary stream (read in chunks, never whole)."""

    def __init__(self, storage: Storage, parts: list[UploadPart]) -> None:
        self._files = (storage.open(p.storage_key) for p in parts)
        self._current: BinaryIO | None = next(self._files, None)

    def read(self, size: int = CHUNK) -> bytes:
        while self._current is not None:
            chunk = self._current.read(size)
            if chunk:
                return chunk
            self._current.close()
            self._current = next(self._files, None)
        return b""


def complete_upload(session: Session, storage: Storage, settings: Settings, caller: Caller, upload_id: str,
                    request: CompleteUploadRequest) -> Upload:
    upload = _pending(session, caller, upload_id, lock=True)  # a concurrent complete waits, then sees it done
    by_id = {p.id: p for p in _parts(session, upload)}
    unknown = [i for i in request.part_ids if i not in by_id]
    if unknown:
        raise invalid(f"Part {unknown[0]} is not a part of upload {upload.id}.", param="part_ids",
                      code="invalid_part_ids")
    if len(set(request.part_ids)) != len(request.part_ids):
        raise invalid("part_ids lists a part more than once.", param="part_ids", code="invalid_part_ids")
    ordered = [by_id[i] for i in request.part_ids]
    total = sum(p.bytes for p in ordered)
    if total != upload.bytes:
        raise invalid(f"The parts hold {total} bytes but the upload was created with bytes={upload.bytes}.",
                      param="part_ids", code="upload_size_mismatch")
    if request.md5:
        digest, reader = hashlib.md5(), PartsReader(storage, ordered)
        while chunk := reader.read():
            digest.update(chunk)
        if digest.hexdigest() != request.md5.lower():
            raise invalid("The md5 of the assembled parts does not match the md5 given.", param="md5",
                          code="md5_mismatch")
    upload.status = "completed"
    session.flush()  # its parts no longer count as pending in the quota: the file takes their place
    limits = file_service.UploadLimits.for_project(session, settings, caller, max_bytes=upload.bytes)

    def completed(row: File) -> None:  # committed with the file itself: never `completed` without a file_id
        upload.file_id = row.id

    file_service.create_file(session, storage, caller, upload=PartsReader(storage, ordered),
                             filename=upload.filename, purpose=upload.purpose, limits=limits,
                             with_row=completed, expected_bytes=upload.bytes,
                             check_processes=settings.resolved_upload_check_processes)
    _drop_parts(storage, ordered)
    return upload


def cancel_upload(session: Session, storage: Storage, caller: Caller, upload_id: str) -> Upload:
    upload = _pending(session, caller, upload_id)
    upload.status = "cancelled"
    session.commit()
    _drop_parts(storage, _parts(session, upload))
    return upload


def _drop_parts(storage: Storage, parts: list[UploadPart]) -> None:
    """The part files only; their rows stay as the upload's record."""
    for part in parts:
        storage.delete(part.storage_key)
