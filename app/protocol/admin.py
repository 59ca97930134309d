"""Wire shapes of /v1/admin (admin keys only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ProjectObject(BaseModel):
    object: Literal["project"] = "project"
    id: str
    name: str
    created_at: int


class CreateProjectRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class ApiKeyObject(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    role: Literal["project", "admin"]
    project: str | None = None  # the project's name; None for an admin key
    display_prefix: str
    created_at: int
    revoked_at: int | None = None
    secret: str | None = None  # only in the answer that created the key


class CreateKeyRequest(BaseModel):
    project: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                description="Project name (created if new); leave out with role=admin.")
    role: Literal["project", "admin"] = "project"


class BaseModelObject(BaseModel):
    object: Literal["model"] = "model"
    id: str
    created: int
    owned_by: str
    available: bool
