"""The background webhook sender: a thread in each API process, never on a job's or a
request's path.

Each round it (1) records one delivery per (endpoint, job) for every job of the endpoint's
project that reached a terminal status after the endpoint was registered — the unique
(endpoint, job) pair makes that exactly once, whichever process gets there first — and
(2) sends the deliveries that are due. A sender claims a delivery by moving its
next_attempt_at forward with a conditional UPDATE, so two processes never send the same
attempt. A non-2xx answer or a network error is recorded and retried after
backoff * 2**(attempt-1) seconds, up to webhook_max_attempts; then the delivery is `failed`.

Signing follows Standard Webhooks: headers webhook-id (the event id, the same on every retry),
webhook-timestamp (unix seconds) and webhook-signature `v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}" keyed with the base64-decoded secret>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import and_, exists, select, update
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.db import session_scope
from app.core.ids import new_id
from app.models import FineTuningJob, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.services.jobs import TERMINAL

log = logging.getLogger("whetstone.webhooks")
CLAIM_MS = 60_000  # a claimed attempt not finished by then (sender died) is tried again


def now_ms() -> int:
    return int(time.time() * 1000)


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def record_new_deliveries(settings: Settings) -> int:
    """One delivery for each (endpoint, job that ended after the endpoint was registered)."""
    with session_scope(settings.resolved_database_url) as session:
        found = session.execute(
            select(WebhookEndpoint.pk, FineTuningJob.pk, FineTuningJob.id, FineTuningJob.status,
                   FineTuningJob.finished_at)
            .join(FineTuningJob, FineTuningJob.project_pk == WebhookEndpoint.project_pk)
            .where(FineTuningJob.status.in_(TERMINAL), FineTuningJob.finished_at >= WebhookEndpoint.created_at,
                   ~exists().where(and_(WebhookDelivery.endpoint_pk == WebhookEndpoint.pk,
                                        WebhookDelivery.job_pk == FineTuningJob.pk)))
            .limit(500)).all()
    added = 0
    for endpoint_pk, job_pk, job_id, status, finished_at in found:
        event_id = new_id("evt")
        event_type = f"fine_tuning.job.{status}"
        payload = {"id": event_id, "object": "event", "type": event_type, "created_at": finished_at,
                   "data": {"id": job_id}}
        try:
            with session_scope(settings.resolved_database_url) as session:
                session.add(WebhookDelivery(id=new_id("whdel"), endpoint_pk=endpoint_pk, job_pk=job_pk,
                                            event_type=event_type, payload=payload, status="pending", attempts=0,
                                            next_attempt_at=now_ms()))
            added += 1
        except IntegrityError:  # another sender recorded it first
            pass
    return added


def _claim(settings: Settings, limit: int) -> list[int]:
    """Up to `limit` due deliveries, now owned by this sender until CLAIM_MS from now."""
    claimed = []
    with session_scope(settings.resolved_database_url) as session:
        due = session.execute(select(WebhookDelivery.pk, WebhookDelivery.next_attempt_at).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now_ms())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
        for pk, seen in due:
            lease = now_ms() + CLAIM_MS
            if session.execute(update(WebhookDelivery).where(WebhookDelivery.pk == pk,
                                                             WebhookDelivery.next_attempt_at == seen)
                               .values(next_attempt_at=lease)).rowcount:
                claimed.append(pk)
    return claimed


def attempt(settings: Settings, client: httpx.Client, delivery_pk: int) -> None:
    url = settings.resolved_database_url
    with session_scope(url) as session:
        delivery = session.get(WebhookDelivery, delivery_pk)
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_pk)
        body, msg_id, target, secret = json.dumps(delivery.payload), delivery.payload["id"], endpoint.url, endpoint.secret
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, msg_id, timestamp, body), "user-agent": "whetstone-webhooks/1"}
    started = time.monotonic()
    status_code, error = None, None
    try:
        response = client.post(target, content=body, headers=headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    duration_ms = int((time.monotonic() - started) * 1000)
    with session_scope(url) as session:
        delivery = session.get(WebhookDelivery, delivery_pk)
        delivery.attempts += 1
        session.add(WebhookAttempt(delivery_pk=delivery_pk, status_code=status_code, error=error,
                                   duration_ms=duration_ms))
        if error is None:
            delivery.status = "delivered"
        elif delivery.attempts >= settings.webhook_max_attempts:
            delivery.status = "failed"
        else:
            delay = settings.webhook_backoff_seconds * 2 ** (delivery.attempts - 1)
            delivery.next_attempt_at = now_ms() + int(delay * 1000)
    if error:
        log.info("webhook %s to %s: attempt failed (%s)", msg_id, target, error)


class WebhookSender:
    """Records deliveries and sends them from up to `parallel` threads, so one slow endpoint
    holds one thread, not the others' deliveries."""

    def __init__(self, settings: Settings, parallel: int = 8) -> None:
        self.settings = settings
        self.parallel = parallel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhook-sender", daemon=True)
        self._busy = 0
        self._lock = threading.Lock()

    def start(self) -> "WebhookSender":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _send(self, client: httpx.Client, pk: int) -> None:
        try:
            attempt(self.settings, client, pk)
        except Exception:  # the claim expires and the attempt is made again
            log.exception("webhook delivery %s: attempt not recorded", pk)
        finally:
            with self._lock:
                self._busy -= 1

    def _loop(self) -> None:
        with httpx.Client(timeout=self.settings.webhook_timeout_seconds, follow_redirects=False) as client, \
                ThreadPoolExecutor(self.parallel, thread_name_prefix="webhook-send") as pool:
            while not self._stop.is_set():
                try:
                    record_new_deliveries(self.settings)
                    with self._lock:
                        free = self.parallel - self._busy
                    for pk in _claim(self.settings, free) if free else []:
                        with self._lock:
                            self._busy += 1
                        pool.submit(self._send, client, pk)
                except Exception:  # the database may be briefly away; try again next round
                    log.exception("webhook sender round failed")
                self._stop.wait(self.settings.webhook_poll_interval)
