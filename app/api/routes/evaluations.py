"""/v1/evaluations: compare a fine-tuned model with its base on a held-out file."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep
from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import APIError
from app.protocol.common import ListResponse
from app.protocol.evaluations import CreateEvaluationRequest, Evaluation
from app.services import evaluations as service
from app.services.queue import enqueue_evaluation

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
log = logging.getLogger("whetstone.evaluations")


@router.post("", response_model=Evaluation)
def create_evaluation(body: CreateEvaluationRequest, caller: Caller = CallerDep,
                      settings: Settings = SettingsDep) -> Evaluation:
    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = service.create_evaluation(session, settings, caller, body)
    try:  # only after the commit: the worker must find the row
        enqueue_evaluation(settings, row.id)
    except Exception as exc:
        log.exception("enqueue failed for %s", row.id)
        with session_scope(url) as session:
            service.mark_enqueue_failed(session, service.get_evaluation(session, caller, row.id), str(exc))
        raise APIError(503, "The job queue is unavailable; the evaluation was not started. Please retry.",
                       type="server_error", code="queue_unavailable") from None
    with session_scope(url) as session:
        return service.to_wire(service.get_evaluation(session, caller, row.id))


@router.get("", response_model=ListResponse[Evaluation])
def list_evaluations(limit: int = Query(20, ge=1, le=100), after: str | None = None, caller: Caller = CallerDep,
                     session: Session = SessionDep) -> ListResponse[Evaluation]:
    rows, has_more = service.list_evaluations(session, caller, limit=limit, after=after)
    data = [service.to_wire(r) for r in rows]
    return ListResponse[Evaluation](data=data, has_more=has_more, first_id=data[0].id if data else None,
                                    last_id=data[-1].id if data else None)


@router.get("/{evaluation_id}", response_model=Evaluation)
def retrieve_evaluation(evaluation_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> Evaluation:
    return service.to_wire(service.get_evaluation(session, caller, evaluation_id))
