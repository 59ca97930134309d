"""/v1/webhooks: a project's webhook endpoints and their deliveries."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from app.api.deps import Caller, CallerDep, SessionDep
from app.protocol.common import ListResponse
from app.protocol.webhooks import (
    CreateWebhookRequest,
    WebhookDeliveryObject,
    WebhookEndpointDeleted,
    WebhookEndpointObject,
)
from app.services import webhooks as service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", response_model=WebhookEndpointObject)
def create_endpoint(body: CreateWebhookRequest, caller: Caller = CallerDep,
                    session: Session = SessionDep) -> WebhookEndpointObject:
    return service.endpoint_to_wire(service.create_endpoint(session, caller.project_pk, body.url), with_secret=True)


@router.get("", response_model=ListResponse[WebhookEndpointObject])
def list_endpoints(caller: Caller = CallerDep, session: Session = SessionDep) -> ListResponse[WebhookEndpointObject]:
    return ListResponse[WebhookEndpointObject](
        data=[service.endpoint_to_wire(r) for r in service.list_endpoints(session, caller.project_pk)])


@router.delete("/{endpoint_id}", response_model=WebhookEndpointDeleted)
def delete_endpoint(endpoint_id: str, caller: Caller = CallerDep, session: Session = SessionDep) -> WebhookEndpointDeleted:
    service.delete_endpoint(session, caller.project_pk, endpoint_id)
    return WebhookEndpointDeleted(id=endpoint_id)


@router.get("/{endpoint_id}/deliveries", response_model=ListResponse[WebhookDeliveryObject])
def list_deliveries(endpoint_id: str, caller: Caller = CallerDep,
                    session: Session = SessionDep) -> ListResponse[WebhookDeliveryObject]:
    endpoint = service.get_endpoint(session, caller.project_pk, endpoint_id)
    return ListResponse[WebhookDeliveryObject](data=service.list_deliveries(session, endpoint))
