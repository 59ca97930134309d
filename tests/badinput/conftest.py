"""Fixtures for the limits tests: an app with chosen limits, and a real uvicorn server in a thread."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.conftest import REDIS_URL, Api, new_key
from tests.e2e.server import in_thread


def _settings(tmp_path, database_url: str, base_models_dir) -> Settings:
    s = Settings(data_dir=tmp_path / "data", database_url=database_url, broker_url=REDIS_URL,
                 queue=f"whetstone-limits-{uuid.uuid4().hex[:8]}", base_models_dir=base_models_dir,
                 webhook_sender=False)
    s.ensure_dirs()
    return s


@pytest.fixture
def own_settings(tmp_path, postgres_url, base_models_dir) -> Settings:
    """The session's database, a data dir and broker queue of the test's own."""
    return _settings(tmp_path, postgres_url, base_models_dir)


@pytest.fixture
def isolated_settings(tmp_path, fresh_postgres_url, base_models_dir) -> Settings:
    """A database of the test's own too: the jobs it leaves waiting reach no other test's worker or reaper."""
    return _settings(tmp_path, fresh_postgres_url, base_models_dir)


@contextmanager
def app_client(settings: Settings, **limits: object) -> Iterator[tuple[TestClient, Settings]]:
    from app.main import create_app

    s = settings.model_copy(update=limits)
    with TestClient(create_app(s)) as client:
        yield client, s


def api_for(client: TestClient, settings: Settings) -> Api:
    return Api(client, new_key(settings))


@contextmanager
def live_server(settings: Settings, **limits: object) -> Iterator[str]:
    """create_app(settings + limits) served as `whetstone serve` serves it, on a free port, in a thread."""
    from app.main import create_app

    with in_thread(create_app(settings.model_copy(update=limits)), settings.shutdown_grace) as base:
        yield base
