"""OpenAI-like object ids: a prefix and random base62 characters."""

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}-{random_token(length)}"


def now() -> int:
    """Unix seconds, the unit of every created_at on the wire."""
    return int(time.time())
