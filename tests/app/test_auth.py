"""Keys: missing or wrong keys get OpenAI's 401; keys are stored only as hashes."""

from __future__ import annotations

from sqlalchemy import select

from app.core.db import session_scope
from app.models import ApiKey
from tests.conftest import new_key
from tests.contract import assert_matches


def test_missing_and_wrong_keys_are_401(client):
    for headers in ({}, {"Authorization": "Bearer sk-whet-not-a-real-key"}, {"Authorization": "Basic abc"}):
        response = client.get("/v1/files", headers=headers)
        assert response.status_code == 401
        assert_matches(response.json(), "ErrorResponse")
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert "sk-whet-not-a-real-key" not in response.text


def test_only_a_hash_of_the_key_is_stored(settings):
    secret = new_key(settings, "hash-check")
    with session_scope(settings.resolved_database_url) as session:
        stored = [(k.key_hash, k.display_prefix) for k in session.scalars(select(ApiKey))]
    assert all(secret != h and secret not in h for h, _ in stored)
    assert any(secret.startswith(prefix) for _, prefix in stored)


def test_unknown_route_is_openai_shaped(api):
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert_matches(response.json(), "ErrorResponse")
