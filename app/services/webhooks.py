"""Webhook endpoints per project, and the record of what was sent to them."""

from __future__ import annotations

import base64
import secrets
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from app.core.errors import invalid
from app.core.ids import new_id
from app.models import FineTuningJob, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.protocol.webhooks import WebhookAttemptObject, WebhookDeliveryObject, WebhookEndpointObject
from app.services.scope import owned, scoped

EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create_endpoint(session: Session, project_pk: int, url: str) -> WebhookEndpoint:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise invalid(f"'{url}' is not an http(s) URL.", param="url", code="invalid_url")
    row = WebhookEndpoint(id=new_id("whep"), project_pk=project_pk, url=url, secret=new_secret())
    session.add(row)
    session.flush()
    return row


def list_endpoints(session: Session, project_pk: int) -> list[WebhookEndpoint]:
    return list(session.scalars(scoped(WebhookEndpoint, project_pk).order_by(WebhookEndpoint.pk)))


def get_endpoint(session: Session, project_pk: int, endpoint_id: str) -> WebhookEndpoint:
    return owned(session, WebhookEndpoint, project_pk, endpoint_id, kind="webhook endpoint")


def delete_endpoint(session: Session, project_pk: int, endpoint_id: str) -> None:
    session.delete(get_endpoint(session, project_pk, endpoint_id))
    session.flush()


def endpoint_to_wire(row: WebhookEndpoint, *, with_secret: bool = False) -> WebhookEndpointObject:
    return WebhookEndpointObject(id=row.id, url=row.url, created_at=row.created_at,
                                 secret=row.secret if with_secret else None)


def list_deliveries(session: Session, endpoint: WebhookEndpoint) -> list[WebhookDeliveryObject]:
    rows = session.execute(scoped(WebhookDelivery, endpoint.project_pk, WebhookDelivery, FineTuningJob.id)
                           .join(FineTuningJob, WebhookDelivery.job_pk == FineTuningJob.pk)
                           .where(WebhookDelivery.endpoint_pk == endpoint.pk).order_by(WebhookDelivery.pk)).all()
    attempts: dict[int, list[WebhookAttemptObject]] = {}
    if rows:
        for a in session.scalars(scoped(WebhookAttempt, endpoint.project_pk).where(WebhookAttempt.delivery_pk.in_([d.pk for d, _ in rows]))
                                 .order_by(WebhookAttempt.pk)):
            attempts.setdefault(a.delivery_pk, []).append(WebhookAttemptObject(
                attempted_at=a.attempted_at, status_code=a.status_code, error=a.error, duration_ms=a.duration_ms))
    return [WebhookDeliveryObject(id=d.id, event_id=d.payload["id"], event_type=d.event_type, fine_tuning_job_id=job_id,
                                  status=d.status, created_at=d.created_at, attempts=attempts.get(d.pk, []))
            for d, job_id in rows]
