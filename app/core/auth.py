"""API keys: `Authorization: Bearer <key>`. Only a sha256 of each key is stored; the secret is
shown once, when the key is made.

Two kinds of key: a project key uses one project's API (files, jobs, models, ...) and sees only
that project's objects; an admin key belongs to no project and manages projects, keys and base
models (`/v1/admin/...`). Neither works on the other's routes (403).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import session_scope
from app.core.errors import APIError
from app.core.ids import new_id, now, random_token
from app.models import ApiKey, Project

KEY_PREFIX = "sk-whet-"
ADMIN_KEY_PREFIX = "sk-whet-admin-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    project_pk: int
    project_id: str
    project_name: str


@dataclass(frozen=True)
class AdminCaller:
    key_id: str


def get_or_create_project(session: Session, project_name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == project_name))
    if project is None:
        project = Project(id=new_id("proj"), name=project_name)
        session.add(project)
        session.flush()
    return project


def issue_key(session: Session, project: Project | None) -> tuple[ApiKey, str]:
    """A new key for `project` (None: an admin key); returns the row and the secret, shown once."""
    secret = (ADMIN_KEY_PREFIX if project is None else KEY_PREFIX) + random_token(40)
    row = ApiKey(id=new_id("key"), role="admin" if project is None else "project",
                 project_pk=None if project is None else project.pk, key_hash=hash_key(secret),
                 display_prefix=secret[:12] if project else secret[:16])
    session.add(row)
    session.flush()
    return row, secret


def create_key(session: Session, project_name: str) -> str:
    """Create (if needed) the project and a new key for it; returns the secret, shown once."""
    return issue_key(session, get_or_create_project(session, project_name))[1]


def create_admin_key(session: Session) -> str:
    return issue_key(session, None)[1]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key (idempotent); LookupError if there is no such key."""
    row = session.scalar(select(ApiKey).where(ApiKey.id == key_id))
    if row is None:
        raise LookupError(key_id)
    if row.revoked_at is None:
        row.revoked_at = now()
        session.flush()
    return row


def rotate_key(session: Session, key_id: str) -> tuple[ApiKey, str]:
    """A new key of the same kind (and project) as `key_id`, which is revoked in the same transaction."""
    old = session.scalar(select(ApiKey).where(ApiKey.id == key_id).with_for_update())
    if old is None:
        raise LookupError(key_id)
    if old.revoked_at is not None:
        raise ValueError(f"key {key_id} is already revoked")
    project = session.get(Project, old.project_pk) if old.project_pk is not None else None
    old.revoked_at = now()
    return issue_key(session, project)


def list_keys(session: Session, project_name: str | None = None) -> list[tuple[ApiKey, Project | None]]:
    query = select(ApiKey, Project).outerjoin(Project, ApiKey.project_pk == Project.pk).order_by(ApiKey.pk)
    if project_name is not None:
        query = query.where(Project.name == project_name)
    return [(k, p) for k, p in session.execute(query)]


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def _forbidden(message: str) -> APIError:
    return APIError(403, message, type="invalid_request_error", code="insufficient_permissions")


def _lookup(session: Session, header: str) -> tuple[ApiKey, Project | None]:
    """The live key of an `Authorization: Bearer <key>` header and its project; 401 otherwise."""
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    secret = secret.strip()
    row = session.execute(
        select(ApiKey, Project).outerjoin(Project, ApiKey.project_pk == Project.pk).where(
            ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        shown = secret[:8] + "*" * 4 + secret[-4:] if len(secret) > 12 else "****"
        raise _unauthorized(f"Incorrect API key provided: {shown}.")
    return row[0], row[1]


def authenticate(session: Session, header: str) -> Caller:
    """The project a project key belongs to, looked up in `session` (so a route can authenticate in
    the session it then works in); 401 for no or a bad key, 403 for an admin key."""
    key, project = _lookup(session, header)
    if key.role != "project" or project is None:
        raise _forbidden("This is an admin key; it manages projects and keys but cannot use a project's API. "
                         "Use a project key.")
    return Caller(project_pk=project.pk, project_id=project.id, project_name=project.name)


def current_caller(request: Request) -> Caller:
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        return authenticate(session, request.headers.get("authorization", ""))


def current_admin(request: Request) -> AdminCaller:
    """An admin key; project keys are refused (403)."""
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        key, _ = _lookup(session, request.headers.get("authorization", ""))
        if key.role != "admin":
            raise _forbidden("You have insufficient permissions for this operation: it needs an admin key.")
        return AdminCaller(key_id=key.id)
