"""Files: upload (validated while it streams to storage), list, retrieve, delete, content."""

from __future__ import annotations

import logging
from typing import BinaryIO

from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.errors import APIError, invalid
from app.core.ids import new_id
from app.models import File
from app.protocol.files import FileObject
from app.services.scope import owned, scoped
from app.services.storage import CHUNK, Storage
from worker.training.validation import InvalidExample, validate_lines

PURPOSES = {"fine-tune"}
# Purposes a client may read but not upload: results written by the service itself.
READ_ONLY_PURPOSES = {"fine-tune-results"}


def to_wire(row: File) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status)


def _lines(source: BinaryIO, sink, limit: int):
    """Yield the upload's lines while copying every byte to `sink`; 413 past `limit` bytes."""
    pending = b""
    while chunk := source.read(CHUNK):
        sink.write(chunk)
        if sink.bytes > limit:
            raise APIError(413, f"File is larger than the limit of {limit} bytes.", param="file",
                           code="file_too_large")
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


def create_file(session: Session, storage: Storage, caller: Caller, *, upload: BinaryIO,
                filename: str, purpose: str, max_bytes: int, with_row=None) -> File:
    """Validate while streaming to storage, then commit the row. `with_row(row)`, if given, runs
    just before that commit, so what it changes is committed together with the file."""
    if purpose not in PURPOSES:
        raise invalid(f"'{purpose}' is not a supported purpose. Supported purposes: {sorted(PURPOSES)}.",
                      param="purpose", code="invalid_purpose")
    file_id = new_id("file")
    key = f"{caller.project_id}/{file_id}.jsonl"
    with storage.writer(key) as writer:
        try:
            summary = validate_lines(_lines(upload, writer, max_bytes))
        except InvalidExample as exc:
            where = f"line {exc.line}: " if exc.line else ""
            raise invalid(f"Invalid file format for fine-tuning: {where}{exc.reason}", param="file",
                          code="invalid_file_format") from None
        row = File(id=file_id, project_pk=caller.project_pk, filename=filename[:512] or "upload.jsonl",
                   purpose=purpose, bytes=writer.bytes, status="processed", storage_key=key,
                   data_format=summary.format, n_examples=summary.n_examples)
        if with_row is not None:
            with_row(row)
        commit_with_file(session, storage, writer, key, row)
    return row


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


def discard_new_file(session: Session, storage: Storage, caller: Caller, row: File) -> None:
    """Take back a file this request has just committed (row, then bytes), after a failed later step."""
    file_id, key = row.id, row.storage_key
    session.rollback()
    session.delete(owned(session, File, caller, file_id, kind="file"))
    session.commit()
    storage.delete(key)


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
