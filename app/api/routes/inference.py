"""/v1/completions, /v1/chat/completions and /v1/models (list, retrieve, delete).

With WHETSTONE_INFERENCE_URL set, completions, chat and model deletion are forwarded to the
`whetstone inference` process (which holds the models); otherwise this process serves them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep, SettingsDep
from app.core.config import Settings
from app.protocol.common import ListResponse
from app.protocol.completions import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from app.protocol.models import DeletedModel, ModelObject
from app.services import completions as service
from app.services import models as model_service
from app.services.inference_proxy import forward

router = APIRouter(prefix="/v1", tags=["inference"])

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _unless_disconnected(request: Request, work: Awaitable):
    """Run `work`; if the client goes away first, cancel it (its generation stops) and answer nothing.
    (Waiting on receive() rather than polling is_disconnected(): the latter sees nothing through
    BaseHTTPMiddleware.)"""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return Response(status_code=499)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _respond(result):
    if isinstance(result, (Completion, ChatCompletion, Response)):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)


async def _serve(request: Request, caller: Caller, session: Session, settings: Settings, body, run):
    if settings.inference_url:
        session.close()
        return await forward(request)
    try:
        target = await run_in_threadpool(model_service.resolve_model, session, settings, caller, body.model)
    finally:
        session.close()  # generation can take a while; do not hold a DB connection for it
    return _respond(await _unless_disconnected(request, run(request.app.state.engine, target, body)))


@router.post("/completions", response_model=Completion)
async def create_completion(body: CompletionRequest, request: Request, caller: Caller = CallerDep,
                            session: Session = SessionDep, settings: Settings = SettingsDep):
    return await _serve(request, caller, session, settings, body, service.complete)


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, caller: Caller = CallerDep,
                                 session: Session = SessionDep, settings: Settings = SettingsDep):
    return await _serve(request, caller, session, settings, body, service.chat)


@router.get("/models", response_model=ListResponse[ModelObject], response_model_exclude={"has_more", "first_id", "last_id"})
def list_models(caller: Caller = CallerDep, session: Session = SessionDep,
                settings: Settings = SettingsDep) -> ListResponse[ModelObject]:
    return ListResponse[ModelObject](data=model_service.list_models(session, settings, caller))


@router.get("/models/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, caller: Caller = CallerDep, session: Session = SessionDep,
                   settings: Settings = SettingsDep) -> ModelObject:
    return model_service.retrieve_model(session, settings, caller, model_id)


@router.delete("/models/{model_id:path}", response_model=DeletedModel)
async def delete_model(model_id: str, request: Request, caller: Caller = CallerDep, session: Session = SessionDep,
                       settings: Settings = SettingsDep):
    if settings.inference_url:  # the inference process deletes it and unloads its adapter
        session.close()
        return await forward(request)
    adapter = await run_in_threadpool(model_service.delete_model, session, settings, caller, model_id)
    request.app.state.engine.evict(adapter)
    return DeletedModel(id=model_id)
