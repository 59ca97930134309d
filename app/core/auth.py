"""API keys: `Authorization: Bearer <key>`. Only a sha256 of each key is stored."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import session_scope
from app.core.errors import APIError
from app.core.ids import new_id, random_token
from app.models import ApiKey, Project

KEY_PREFIX = "sk-whet-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    project_pk: int
    project_id: str
    project_name: str


def create_key(session: Session, project_name: str) -> str:
    """Create (if needed) the project and a new key for it; returns the secret, shown once."""
    project = session.scalar(select(Project).where(Project.name == project_name))
    if project is None:
        project = Project(id=new_id("proj"), name=project_name)
        session.add(project)
        session.flush()
    secret = KEY_PREFIX + random_token(40)
    session.add(ApiKey(id=new_id("key"), project_pk=project.pk, key_hash=hash_key(secret), display_prefix=secret[:12]))
    return secret


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def authenticate(session: Session, header: str) -> Caller:
    """The caller of an `Authorization: Bearer <key>` header, looked up in `session`; 401 otherwise."""
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    secret = secret.strip()
    row = session.execute(
        select(ApiKey, Project).join(Project, ApiKey.project_pk == Project.pk).where(
            ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        shown = secret[:8] + "*" * 4 + secret[-4:] if len(secret) > 12 else "****"
        raise _unauthorized(f"Incorrect API key provided: {shown}.")
    _, project = row
    return Caller(project_pk=project.pk, project_id=project.id, project_name=project.name)


def current_caller(request: Request) -> Caller:
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        return authenticate(session, request.headers.get("authorization", ""))
