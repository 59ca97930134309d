"""Files API wire models (OpenAI's `file` object)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# --- file validation (issue 9) ---
class ValidateFileRequest(BaseModel):
    model: str | None = None  # a base model whose tokenizer measures example lengths
    max_tokens: int = 1024


class ValidationFinding(BaseModel):
    check: str
    severity: Literal["error", "warning"]
    message: str
    where: list[str]
    fix: str | None = None  # what `whetstone prepare-data --yes` would do about it


class FileValidation(BaseModel):
    object: Literal["file.validation"] = "file.validation"
    file_id: str
    format: str | None
    n_examples: int | None
    valid: bool  # no error: the file can train (a training file also needs MIN_EXAMPLES examples)
    findings: list[ValidationFinding]
