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


# --- issue 16: malformed headers, revoked keys, admin keys, keys list / revoke / rotate -----------

import re  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from app.cli import main as cli  # noqa: E402
from app.core.auth import create_admin_key  # noqa: E402
from app.core.config import get_settings  # noqa: E402


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == code
    return response.json()["error"]


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "bearer\t", "Token sk-whet-abc", "sk-whet-abc",
                                    "Bearer sk-whet-a b", "Bearer " + "x" * 5000])
def test_malformed_authorization_headers_are_401(client, header):
    error = _error(client.get("/v1/files", headers={"Authorization": header}), 401, "invalid_api_key")
    assert "x" * 100 not in error["message"]  # a long key is not echoed back


def test_a_revoked_key_is_refused_from_the_next_request(client, settings):
    runner = CliRunner(env={"WHETSTONE_DATABASE_URL": settings.resolved_database_url,
                            "WHETSTONE_DATA_DIR": str(settings.resolved_data_dir)})
    try:
        made = runner.invoke(cli, ["keys", "create", "--project", "revoke-me"])
        assert made.exit_code == 0, made.output
        secret = made.stdout.strip()
        headers = {"Authorization": f"Bearer {secret}"}
        assert client.get("/v1/files", headers=headers).status_code == 200
        listed = runner.invoke(cli, ["keys", "list", "--project", "revoke-me"]).stdout
        assert secret not in listed  # never shown again
        (line,) = [x for x in listed.splitlines() if secret[:12] in x]
        key_id = line.split("\t")[0]
        assert "active" in line and "project" in line

        rotated = runner.invoke(cli, ["keys", "rotate", key_id])
        assert rotated.exit_code == 0, rotated.output
        new_id, new_secret = rotated.stdout.split()
        _error(client.get("/v1/files", headers=headers), 401, "invalid_api_key")  # the old one is revoked
        new_headers = {"Authorization": f"Bearer {new_secret}"}
        assert client.get("/v1/files", headers=new_headers).status_code == 200  # same project, new key

        assert runner.invoke(cli, ["keys", "revoke", new_id]).exit_code == 0
        _error(client.get("/v1/files", headers=new_headers), 401, "invalid_api_key")
        assert runner.invoke(cli, ["keys", "rotate", new_id]).exit_code != 0  # a revoked key is not rotated
        assert runner.invoke(cli, ["keys", "revoke", "key-nope"]).exit_code != 0
        states = [x.split("\t")[-1] for x in runner.invoke(cli, ["keys", "list", "--project", "revoke-me"]).stdout.splitlines()]
        assert len(states) == 2 and all(s.startswith("revoked@") for s in states)
    finally:
        get_settings.cache_clear()


def test_project_keys_get_403_on_admin_routes_and_admin_keys_403_on_project_routes(client, api, settings):
    for method, url in (("GET", "/v1/admin/projects"), ("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"),
                        ("GET", "/v1/admin/base_models"), ("POST", "/v1/admin/keys/key-x/revoke")):
        _error(client.request(method, url, headers=api.headers, json={"project": "x"}), 403,
               "insufficient_permissions")
    with session_scope(settings.resolved_database_url) as session:
        admin = {"Authorization": f"Bearer {create_admin_key(session)}"}
    for url in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models"):
        _error(client.get(url, headers=admin), 403, "insufficient_permissions")


def test_admin_keys_manage_projects_and_keys(client, settings):
    with session_scope(settings.resolved_database_url) as session:
        admin = {"Authorization": f"Bearer {create_admin_key(session)}"}
    made = client.post("/v1/admin/keys", headers=admin, json={"project": "made-by-admin"})
    assert made.status_code == 200, made.text
    key = made.json()
    assert key["role"] == "project" and key["project"] == "made-by-admin" and key["secret"].startswith("sk-whet-")
    project_headers = {"Authorization": f"Bearer {key['secret']}"}
    assert client.get("/v1/files", headers=project_headers).status_code == 200
    listed = client.get("/v1/admin/keys", headers=admin, params={"project": "made-by-admin"}).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]] and listed[0]["secret"] is None  # shown once
    assert "made-by-admin" in [p["name"] for p in client.get("/v1/admin/projects", headers=admin).json()["data"]]
    assert "tiny-llama" in [m["id"] for m in client.get("/v1/admin/base_models", headers=admin).json()["data"]]

    rotated = client.post(f"/v1/admin/keys/{key['id']}/rotate", headers=admin).json()
    assert rotated["id"] != key["id"] and rotated["secret"] and rotated["project"] == "made-by-admin"
    _error(client.get("/v1/files", headers=project_headers), 401, "invalid_api_key")
    revoked = client.post(f"/v1/admin/keys/{rotated['id']}/revoke", headers=admin).json()
    assert revoked["revoked_at"] is not None and revoked["secret"] is None
    _error(client.get("/v1/files", headers={"Authorization": f"Bearer {rotated['secret']}"}), 401, "invalid_api_key")
    _error(client.post("/v1/admin/keys/key-nope/revoke", headers=admin), 404, "api_key_not_found")
    _error(client.post("/v1/admin/keys", headers=admin, json={"role": "admin", "project": "x"}), 400, "invalid_value")
    second_admin = client.post("/v1/admin/keys", headers=admin, json={"role": "admin"}).json()
    assert second_admin["role"] == "admin" and second_admin["project"] is None
    assert re.fullmatch(r"sk-whet-admin-\w+", second_admin["secret"])
