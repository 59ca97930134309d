"""Webhook endpoints and deliveries (Whetstone's own API: OpenAI configures webhooks in its
dashboard). The events themselves are OpenAI's: `fine_tuning.job.succeeded|failed|cancelled`,
signed the Standard Webhooks way."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CreateWebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://\S+$")


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    created_at: int
    # Shown when the endpoint is created only; a receiver verifies signatures with it.
    secret: str | None = None


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: bool = True


class WebhookAttemptObject(BaseModel):
    attempted_at: int
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDeliveryObject(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    fine_tuning_job_id: str
    status: Literal["pending", "delivered", "failed"]
    created_at: int
    attempts: list[WebhookAttemptObject]
