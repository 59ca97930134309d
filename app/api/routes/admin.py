"""/v1/admin: projects, API keys and base models. Admin keys only (a project key gets 403)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import AdminCaller, AdminDep, SessionDep, SettingsDep
from app.core import auth
from app.core.config import Settings
from app.core.errors import invalid, not_found
from app.models import ApiKey, Project
from app.protocol.admin import ApiKeyObject, BaseModelObject, CreateKeyRequest, CreateProjectRequest, ProjectObject
from app.protocol.common import ListResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _project_wire(row: Project) -> ProjectObject:
    return ProjectObject(id=row.id, name=row.name, created_at=row.created_at)


def _key_wire(row: ApiKey, project: Project | None, secret: str | None = None) -> ApiKeyObject:
    return ApiKeyObject(id=row.id, role=row.role, project=project.name if project else None,
                        display_prefix=row.display_prefix, created_at=row.created_at, revoked_at=row.revoked_at,
                        secret=secret)


@router.get("/projects", response_model=ListResponse[ProjectObject])
def list_projects(admin: AdminCaller = AdminDep, session: Session = SessionDep) -> ListResponse[ProjectObject]:
    return ListResponse[ProjectObject](data=[_project_wire(p) for p in session.scalars(select(Project).order_by(Project.pk))])


@router.post("/projects", response_model=ProjectObject)
def create_project(body: CreateProjectRequest, admin: AdminCaller = AdminDep,
                   session: Session = SessionDep) -> ProjectObject:
    project = auth.get_or_create_project(session, body.name)
    session.commit()
    return _project_wire(project)


@router.get("/keys", response_model=ListResponse[ApiKeyObject])
def list_keys(project: str | None = Query(None), admin: AdminCaller = AdminDep,
              session: Session = SessionDep) -> ListResponse[ApiKeyObject]:
    return ListResponse[ApiKeyObject](data=[_key_wire(k, p) for k, p in auth.list_keys(session, project)])


@router.post("/keys", response_model=ApiKeyObject)
def create_key(body: CreateKeyRequest, admin: AdminCaller = AdminDep, session: Session = SessionDep) -> ApiKeyObject:
    if (body.role == "admin") == (body.project is not None):
        raise invalid("Give a project for a project key, and none for an admin key.", param="project",
                      code="invalid_value")
    project = auth.get_or_create_project(session, body.project) if body.project else None
    row, secret = auth.issue_key(session, project)
    session.commit()
    return _key_wire(row, project, secret)


def _key(session: Session, key_id: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.id == key_id))
    if row is None:
        raise not_found("api key", key_id)
    return row


@router.post("/keys/{key_id}/revoke", response_model=ApiKeyObject)
def revoke_key(key_id: str, admin: AdminCaller = AdminDep, session: Session = SessionDep) -> ApiKeyObject:
    _key(session, key_id)
    row = auth.revoke_key(session, key_id)
    session.commit()
    return _key_wire(row, row.project)


@router.post("/keys/{key_id}/rotate", response_model=ApiKeyObject)
def rotate_key(key_id: str, admin: AdminCaller = AdminDep, session: Session = SessionDep) -> ApiKeyObject:
    if _key(session, key_id).revoked_at is not None:
        raise invalid(f"Key {key_id} is revoked; only a live key can be rotated.", param="key_id",
                      code="key_revoked")
    row, secret = auth.rotate_key(session, key_id)
    session.commit()
    return _key_wire(row, row.project, secret)


@router.get("/base_models", response_model=ListResponse[BaseModelObject])
def list_base_models(admin: AdminCaller = AdminDep, settings: Settings = SettingsDep) -> ListResponse[BaseModelObject]:
    """The base models in the configured registry (WHETSTONE_BASE_MODELS_DIR); `available` is false
    for the built-in one until it has been imported."""
    from app.services.base_models import OWNER, is_model_dir, list_base_models as base_models

    return ListResponse[BaseModelObject](data=[
        BaseModelObject(id=m.name, created=m.created, owned_by=OWNER, available=is_model_dir(m.path))
        for m in base_models(settings)])
