"""/healthz says the process is up; /readyz says whether the database, the broker and the
storage can be reached, and names the one that cannot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from fastapi.testclient import TestClient

from app.main import create_app
from tests.deploy.conftest import moto_server, s3_client
from tests.deploy.pg_cluster import PgCluster
from tests.e2e.server import free_port


@pytest.fixture
def own_postgres() -> Iterator[PgCluster]:
    cluster = PgCluster(free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


def test_ready_when_everything_is_reachable(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
                               "failed": []}
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readiness_follows_postgres_down_and_back(settings, own_postgres):
    with TestClient(create_app(settings.model_copy(update={"database_url": own_postgres.url}))) as client:
        assert client.get("/readyz").status_code == 200

        own_postgres.stop()
        down = client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable" and body["failed"] == ["database"]
        assert body["checks"]["broker"] == "ok" and body["checks"]["storage"] == "ok"
        assert "OperationalError" in body["checks"]["database"]
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        own_postgres.start()
        back = client.get("/readyz")
        assert back.status_code == 200, back.text


def test_broker_down_is_named(settings):
    dead = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(dead)) as client:
        body = client.get("/readyz").json()
    assert body["failed"] == ["broker"] and "ConnectionError" in body["checks"]["broker"]


def test_storage_down_is_named(settings, tmp_path):
    with moto_server(tmp_path / "moto.log") as url:
        s3_client(url).create_bucket(Bucket="ready-bucket")
        s3 = settings.model_copy(update={"storage_backend": "s3", "s3_bucket": "ready-bucket", "s3_endpoint_url": url,
                                         "s3_access_key_id": "testing",
                                         "s3_secret_access_key": SecretStr("testing"), "ready_timeout": 5.0})
        with TestClient(create_app(s3)) as client:
            assert client.get("/readyz").status_code == 200
            missing = TestClient(create_app(s3.model_copy(update={"s3_bucket": "not-there"})))
            assert missing.get("/readyz").json()["failed"] == ["storage"]
    with TestClient(create_app(s3)) as client:  # the object store is gone
        body = client.get("/readyz").json()
    assert body["failed"] == ["storage"] and body["checks"]["storage"] != "ok"
