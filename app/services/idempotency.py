"""`Idempotency-Key` on POSTs that create something (jobs, files): the official SDK retries a
POST on timeouts and 5xx, so the same key must give back the same object, never a second one.
The key row is written in the same transaction as the object; a key seen with a different
body is refused with 400."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.errors import invalid
from app.models import IdempotencyKey
from app.services.scope import scoped

MAX_KEY_LENGTH = 255


def digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def check_key(key: str | None) -> str | None:
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise invalid(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.", param="Idempotency-Key",
                      code="invalid_idempotency_key")
    return key


def lookup(session: Session, caller: Caller, scope: str, key: str, request_hash: str) -> str | None:
    """The id of the object created earlier with this key, None if the key is new; 400 if the body differs."""
    row = session.scalar(scoped(IdempotencyKey, caller).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key))
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise invalid("This Idempotency-Key was already used with a different request body; use a new key for "
                      "a new request.", param="Idempotency-Key", code="idempotency_key_reused")
    return row.object_id


def known(session: Session, caller: Caller, scope: str, key: str) -> bool:
    """Was this key used before (with any body)?"""
    return session.scalar(scoped(IdempotencyKey, caller, IdempotencyKey.pk)
                          .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)) is not None


def remember(session: Session, caller: Caller, scope: str, key: str, request_hash: str, object_id: str) -> None:
    session.add(IdempotencyKey(project_pk=caller.project_pk, scope=scope, key=key, request_hash=request_hash,
                               object_id=object_id))
    session.flush()


def upload_digest_of(sha256: bytes, filename: str, purpose: str) -> str:
    """The request hash of an upload whose bytes' sha256 is known (hashed while it streamed)."""
    return digest([purpose.encode(), filename.encode(), sha256])
