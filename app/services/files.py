"""Files: upload (validated while it streams to storage), list, retrieve, delete, content."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.errors import APIError, invalid, not_found
from app.core.ids import new_id
from app.models import File
from app.protocol.files import FileObject
from app.services.storage import CHUNK, Storage
from worker.training.validation import DataSummary, InvalidExample, LineValidator

PURPOSES = {"fine-tune"}
# Purposes a client may read but not upload: results written by the service itself.
READ_ONLY_PURPOSES = {"fine-tune-results"}


def to_wire(row: File) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status)


class FileSink:
    """An upload's bytes, in order, in blocks of any size: each block is stored and its complete
    lines checked as it comes (the last, unfinished line waits for the next block). 413 past
    `limit` bytes, 400 naming the line for a bad example; `finish` gives the summary. With
    `digest`, the sha256 of the bytes is kept too (Idempotency-Key)."""

    def __init__(self, writer, limit: int, *, digest: bool = False) -> None:
        self.writer, self.limit = writer, limit
        self.sha256 = hashlib.sha256() if digest else None
        self.validator = LineValidator()
        self._rest = b""

    def feed(self, block: bytes) -> None:
        self.writer.write(block)
        if self.writer.bytes > self.limit:
            raise APIError(413, f"File is larger than the limit of {self.limit} bytes.", param="file",
                           code="file_too_large")
        if self.sha256 is not None:
            self.sha256.update(block)
        lines = block.split(b"\n")
        lines[0] = self._rest + lines[0]
        self._rest = lines.pop()
        self._check(lines)

    def finish(self) -> DataSummary:
        if self._rest:
            self._check([self._rest])
            self._rest = b""
        return self._check(None)

    def _check(self, lines: list[bytes] | None) -> DataSummary | None:
        try:
            if lines is None:
                return self.validator.finish()
            self.validator.feed(lines)
        except InvalidExample as exc:
            where = f"line {exc.line}: " if exc.line else ""
            raise invalid(f"Invalid file format for fine-tuning: {where}{exc.reason}", param="file",
                          code="invalid_file_format") from None
        return None


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise invalid(f"'{purpose}' is not a supported purpose. Supported purposes: {sorted(PURPOSES)}.",
                      param="purpose", code="invalid_purpose")


def new_file(caller: Caller) -> tuple[str, str]:
    """A new file's id and storage key."""
    file_id = new_id("file")
    return file_id, f"{caller.project_id}/{file_id}.jsonl"


def file_row(caller: Caller, file_id: str, key: str, filename: str, purpose: str, size: int,
             summary: DataSummary) -> File:
    return File(id=file_id, project_pk=caller.project_pk, filename=filename[:512] or "upload.jsonl",
                purpose=purpose, bytes=size, status="processed", storage_key=key,
                data_format=summary.format, n_examples=summary.n_examples)


def create_file(session: Session, storage: Storage, caller: Caller, *, upload: BinaryIO,
                filename: str, purpose: str, max_bytes: int) -> File:
    """A file from a readable stream (the Uploads API's assembled parts)."""
    check_purpose(purpose)
    file_id, key = new_file(caller)
    with storage.writer(key) as writer:
        sink = FileSink(writer, max_bytes)
        while chunk := upload.read(CHUNK):
            sink.feed(chunk)
        row = file_row(caller, file_id, key, filename, purpose, writer.bytes, sink.finish())
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
    row = session.scalar(select(File).where(File.id == file_id, File.project_pk == caller.project_pk))
    if row is None:
        raise not_found("file", file_id, param=param)
    return row


def list_files(session: Session, caller: Caller, *, purpose: str | None, limit: int, after: str | None,
               order: str) -> tuple[list[File], bool]:
    query = select(File).where(File.project_pk == caller.project_pk)
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
    row = get_file(session, caller, file_id)
    session.delete(row)
    session.flush()
    storage.delete(row.storage_key)


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
