"""Files: upload (validated while it streams to storage), list, retrieve, delete, content."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import func
from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.config import Settings
from app.core.errors import APIError, invalid
from app.core.ids import new_id
from app.models import File
from app.protocol.files import FileObject
from app.services.scope import owned, scoped
from app.services.storage import CHUNK, Storage
from app.services.upload_check import LineCheck, LineLimits, UploadCheckError
from app.services.upload_check_process import POOL, CheckProcessBroken, RemoteLineCheck
from worker.training.validation import DataSummary

PURPOSES = {"fine-tune"}
# Purposes a client may read but not upload: results written by the service itself.
READ_ONLY_PURPOSES = {"fine-tune-results"}
# Uploads at least this large are checked in a process of their own (when one is free): below it,
# starting on another core gains less than handing the blocks over costs.
REMOTE_CHECK_FROM = 16 << 20
# Writes of upload blocks, each beside the check of the same block (FileSink.feed).
_WRITES = ThreadPoolExecutor(max_workers=8, thread_name_prefix="upload-write")


def to_wire(row: File) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status)


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded file may be (Settings: max_upload_bytes, max_upload_line_bytes,
    max_upload_lines, and what is left of max_storage_bytes_per_project)."""

    max_bytes: int
    max_line_bytes: int
    max_lines: int
    quota: int = 0  # max_storage_bytes_per_project (0: none)
    quota_left: int | None = None  # None: no storage quota

    @classmethod
    def for_project(cls, session: Session, settings: Settings, caller: Caller, *,
                    max_bytes: int | None = None, retry: bool = False) -> "UploadLimits":
        """`retry`: the upload repeats one already stored under its Idempotency-Key; it stores
        nothing new (it answers with that file), so the storage quota does not apply."""
        quota, quota_left = settings.max_storage_bytes_per_project, None
        if quota > 0 and not retry:
            quota_left = quota - project_storage_bytes(session, caller.project_pk)
            if quota_left <= 0:
                raise quota_exceeded(quota)
        return cls(max_bytes=settings.max_upload_bytes if max_bytes is None else max_bytes,
                   max_line_bytes=settings.max_upload_line_bytes, max_lines=settings.max_upload_lines,
                   quota=quota, quota_left=quota_left)


def quota_exceeded(quota: int, param: str = "file") -> APIError:
    return APIError(413, f"This project's stored files would exceed its quota of {quota} bytes; delete files "
                    "it no longer needs.", param=param, code="storage_quota_exceeded")


def project_storage_bytes(session: Session, caller: Caller | int) -> int:
    """Bytes a project keeps: its files, and the parts of its uploads still pending."""
    from app.models import Upload, UploadPart

    files = session.scalar(scoped(File, caller, func.coalesce(func.sum(File.bytes), 0)))
    parts = session.scalar(scoped(UploadPart, caller, func.coalesce(func.sum(UploadPart.bytes), 0))
                           .where(Upload.status == "pending"))
    return int(files) + int(parts)


class FileSink:
    """An upload's bytes, in order, in blocks of any size: each block is stored and its lines
    checked (`upload_check.LineCheck`). 413 past the byte limit or the project's quota, 400 naming
    the line for a bad example, a line too long or too many lines; `finish` gives the summary,
    `close` (always) hands back what the check held. With `digest`, the sha256 of the bytes is kept
    too (Idempotency-Key).

    The check (`check_block`: the limits, then the lines) and the write (`store_block`) are two
    lanes: each sees every block in order, and they may run some blocks apart (`lanes`, for
    upload_blocks.Lanes); `feed` does both for one block, the write in a thread of `_WRITES` while
    the calling thread checks. An upload expected to be large (`expected_bytes`, e.g. its
    Content-Length) is checked in processes of their own instead (`upload_check_process.py`), when
    some of the `check_processes` are free (by default there are none where the compiled scanner
    is built: Settings); a line's error is then raised by a later call, still the first one."""

    def __init__(self, writer, limits: UploadLimits, *, digest: bool = False, expected_bytes: int = 0,
                 check_processes: int = 0) -> None:
        self.writer, self.limits = writer, limits
        self.sha256 = hashlib.sha256() if digest else None
        self.checked = 0  # bytes through the check lane
        line_limits = LineLimits(limits.max_line_bytes, limits.max_lines)
        processes = POOL.lease_some(check_processes) if expected_bytes >= REMOTE_CHECK_FROM else []
        self.check = RemoteLineCheck(processes, line_limits, POOL) if processes else LineCheck(line_limits)

    @property
    def lanes(self) -> tuple[Callable[[bytes], None], Callable[[bytes], None]]:
        return self.check_block, self.store_block

    def feed(self, block: bytes) -> None:
        written = _WRITES.submit(self.store_block, block)
        try:
            self.check_block(block)
        finally:
            written.result()

    def check_block(self, block: bytes) -> None:
        """The limits, then the block's lines. (Bytes past a limit may be written already: they
        are never committed.)"""
        limits, size = self.limits, self.checked + len(block)
        if size > limits.max_bytes:
            self._settled(APIError(413, f"File is larger than the limit of {limits.max_bytes} bytes.", param="file",
                                   code="file_too_large"))
        if limits.quota_left is not None and size > limits.quota_left:
            self._settled(quota_exceeded(limits.quota))
        self.checked = size
        with _as_api_error():
            self.check.feed(block)

    def store_block(self, block: bytes) -> None:
        self.writer.write(block)
        if self.sha256 is not None:
            self.sha256.update(block)

    def finish(self) -> DataSummary:
        with _as_api_error():
            return self.check.finish()

    def close(self) -> None:
        self.check.close()

    def _settled(self, error: APIError) -> None:
        """Raise `error`, unless a line already fed (and maybe still being checked elsewhere) was bad."""
        with _as_api_error():
            self.check.settle()
        raise error


@contextmanager
def _as_api_error():
    try:
        yield
    except UploadCheckError as exc:
        raise invalid(exc.message, param="file", code=exc.code) from None
    except CheckProcessBroken as exc:
        logging.getLogger("whetstone.files").error("upload check failed: %s", exc)
        raise APIError(500, "The file could not be checked; send it again.", type="server_error",
                       code="upload_check_failed") from None


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise invalid(f"'{purpose}' is not a supported purpose. Supported purposes: {sorted(PURPOSES)}.",
                      param="purpose", code="invalid_purpose")


def new_file(caller: Caller) -> tuple[str, str]:
    """A new file's id and storage key: server-made (project id, new file id); the client's
    filename is only a label in the row, never part of a path."""
    file_id = new_id("file")
    return file_id, f"{caller.project_id}/{file_id}.jsonl"


def file_row(caller: Caller, file_id: str, key: str, filename: str, purpose: str, size: int,
             summary: DataSummary) -> File:
    return File(id=file_id, project_pk=caller.project_pk, filename=_label(filename),
                purpose=purpose, bytes=size, status="processed", storage_key=key,
                data_format=summary.format, n_examples=summary.n_examples)


def create_file(session: Session, storage: Storage, caller: Caller, *, upload: BinaryIO,
                filename: str, purpose: str, limits: UploadLimits, with_row=None, expected_bytes: int = 0,
                check_processes: int = 0) -> File:
    """A file from a readable stream (the Uploads API's assembled parts); the content is only
    parsed as JSON lines, never executed or unpickled. `with_row(row)`, if given, runs just before
    the commit, so what it changes is committed together with the file. `expected_bytes` and
    `check_processes`: as for FileSink."""
    check_purpose(purpose)
    file_id, key = new_file(caller)
    with storage.writer(key) as writer:
        sink = FileSink(writer, limits, expected_bytes=expected_bytes, check_processes=check_processes)
        try:
            while chunk := upload.read(4 * CHUNK):
                sink.feed(chunk)
            summary = sink.finish()
        finally:
            sink.close()
        row = file_row(caller, file_id, key, filename, purpose, writer.bytes, summary)
        if with_row is not None:
            with_row(row)
        commit_with_file(session, storage, writer, key, row)
    return row


def _label(filename: str) -> str:
    """The client's filename as a display label: control characters dropped, at most 512 characters."""
    cleaned = "".join(ch for ch in filename if ch.isprintable())[:512]
    return cleaned or "upload.jsonl"


def commit_with_file(session: Session, storage: Storage, writer, key: str, row: object) -> None:
    """Flush the row (constraints checked), move the file into place, commit; a failed commit
    removes the file again, so neither exists without the other."""
    session.add(row)
    session.flush()
    writer.commit()
    try:
        session.commit()
    except BaseException:
        storage.delete(key)
        raise


def get_file(session: Session, caller: Caller, file_id: str, *, param: str | None = None) -> File:
    return owned(session, File, caller, file_id, kind="file", param=param)


def list_files(session: Session, caller: Caller, *, purpose: str | None, limit: int, after: str | None,
               order: str) -> tuple[list[File], bool]:
    query = scoped(File, caller)
    if purpose:
        query = query.where(File.purpose == purpose)
    descending = order != "asc"
    if after:
        cursor = get_file(session, caller, after, param="after")
        query = query.where(File.pk < cursor.pk if descending else File.pk > cursor.pk)
    query = query.order_by(File.pk.desc() if descending else File.pk.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, storage: Storage, caller: Caller, file_id: str) -> None:
    """The row first (committed), then the bytes: a failed commit leaves the file whole; bytes that
    cannot be removed afterwards are only an orphan in storage, never a row without its content."""
    row = get_file(session, caller, file_id)
    key = row.storage_key
    session.delete(row)
    session.commit()
    try:
        storage.delete(key)
    except Exception:  # noqa: BLE001 - the file is gone for the client; the bytes are logged as orphaned
        logging.getLogger("whetstone.files").exception("file %s deleted; its bytes %s could not be removed",
                                                       file_id, key)


def open_content(session: Session, storage: Storage, caller: Caller, file_id: str) -> tuple[File, BinaryIO]:
    """The caller's file and its bytes, opened now: content that has gone missing is a 404 before
    any byte of the answer is sent, not a stream that breaks halfway."""
    row = get_file(session, caller, file_id)
    try:
        return row, storage.open(row.storage_key)
    except FileNotFoundError:
        logging.getLogger("whetstone.files").error("file %s: its content %s is missing from storage",
                                                   file_id, row.storage_key)
        raise APIError(404, f"The content of file '{file_id}' is not available.", param="file_id",
                       code="file_content_missing") from None


def iter_content(handle: BinaryIO):
    try:
        while chunk := handle.read(CHUNK):
            yield chunk
    finally:
        handle.close()


# --- file validation (issue 9): the prepare-data checks on a stored file ---
def validate_file(session: Session, storage: Storage, settings, caller: Caller, file_id: str, *,
                  model: str | None, max_tokens: int) -> dict:
    from worker.dataprep.checks import run_checks
    from worker.dataprep.readers import read_records

    row = get_file(session, caller, file_id)
    if row.purpose != "fine-tune":
        raise invalid(f"File '{file_id}' has purpose '{row.purpose}'; only fine-tune files are validated.",
                      param="file_id", code="invalid_file")
    tokenizer = None
    if model is not None:
        from app.services.base_models import find_base_model

        base = find_base_model(settings, model)
        if base is None or not (base.path / "tokenizer_config.json").is_file():
            raise invalid(f"Model '{model}' is not an available base model.", param="model", code="model_not_available")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
    findings = run_checks(read_records(storage.local_path(row.storage_key), "jsonl"), tokenizer, max_tokens)
    return {"file_id": row.id, "format": row.data_format, "n_examples": row.n_examples,
            "valid": not any(f.severity == "error" for f in findings), "findings": [f.as_dict() for f in findings]}
