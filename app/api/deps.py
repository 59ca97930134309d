"""Dependencies shared by the routers: the caller, a DB session, settings, storage."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.auth import AdminCaller, Caller, current_admin, current_caller
from app.core.config import Settings
from app.core.db import session_scope
from app.services.storage import Storage


def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def session_dep(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        yield session


def storage_dep(request: Request) -> Storage:
    return request.app.state.storage


CallerDep = Depends(current_caller)
AdminDep = Depends(current_admin)
SessionDep = Depends(session_dep)
SettingsDep = Depends(settings_dep)
StorageDep = Depends(storage_dep)
__all__ = ["AdminCaller", "AdminDep", "Caller", "CallerDep", "SessionDep", "SettingsDep", "StorageDep"]
