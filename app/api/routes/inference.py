"""/v1/completions, /v1/chat/completions and /v1/models"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep
from app.core.config import Settings
from app.protocol.common import ListResponse
from app.protocol.completions import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from app.protocol.models import ModelObject
from app.services import completions as service
from app.services import models as model_service

router = APIRouter(prefix="/v1", tags=["inference"])

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _respond(result):
    if isinstance(result, (Completion, ChatCompletion)):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/completions", response_model=Completion)
def create_completion(body: CompletionRequest, request: Request, caller: Caller = CallerDep,
                      session: Session = SessionDep, settings: Settings = SettingsDep):
    target = model_service.resolve_model(session, settings, caller, body.model)
    session.close()  # generation can take a while; do not hold a DB connection for it
    return _respond(service.complete(request.app.state.engine, target, body))


@router.post("/chat/completions", response_model=ChatCompletion)
def create_chat_completion(body: ChatCompletionRequest, request: Request, caller: Caller = CallerDep,
                           session: Session = SessionDep, settings: Settings = SettingsDep):
    target = model_service.resolve_model(session, settings, caller, body.model)
    session.close()
    return _respond(service.chat(request.app.state.engine, target, body))


@router.get("/models", response_model=ListResponse[ModelObject], response_model_exclude={"has_more", "first_id", "last_id"})
def list_models(caller: Caller = CallerDep, session: Session = SessionDep,
                settings: Settings = SettingsDep) -> ListResponse[ModelObject]:
    return ListResponse[ModelObject](data=model_service.list_models(session, settings, caller))


@router.get("/models/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, caller: Caller = CallerDep, session: Session = SessionDep,
                   settings: Settings = SettingsDep) -> ModelObject:
    return model_service.retrieve_model(session, settings, caller, model_id)
