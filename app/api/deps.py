"""Dependencies shared by the routers: the caller, a DB session, settings, storage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.auth import AdminCaller, Caller, authenticate, current_admin, current_caller
from app.core.config import Settings
from app.core.db import session_scope
from app.services.storage import Storage


# No I/O: async, so FastAPI calls them on the event loop instead of in a worker thread.
async def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def session_dep(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        yield session


@contextmanager
def caller_session(request: Request) -> Iterator[tuple[Session, Caller]]:
    """For a route that does all its database work in one worker-thread call: one session, the
    caller authenticated in it (its Project stays in the session, so `job.project` costs no query).
    Each sync dependency and sync route is a thread hop of its own (a wake-up each way, which on a
    busy host costs more than the queries); a hot route runs `run_in_threadpool` once instead."""
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        yield session, authenticate(session, request.headers.get("authorization", ""))


async def storage_dep(request: Request) -> Storage:
    return request.app.state.storage


CallerDep = Depends(current_caller)
AdminDep = Depends(current_admin)
SessionDep = Depends(session_dep)
SettingsDep = Depends(settings_dep)
StorageDep = Depends(storage_dep)
__all__ = ["AdminCaller", "AdminDep", "Caller", "CallerDep", "SessionDep", "SettingsDep", "StorageDep",
           "caller_session"]
