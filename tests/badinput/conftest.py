"""Fixtures for the limits tests: an app with chosen limits, and a real uvicorn server in a thread."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.shutdown import server_config
from tests.conftest import REDIS_URL, Api, new_key


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(settings: Settings, **limits: object) -> Iterator[str]:
    """create_app(settings + limits) served as `whetstone serve` serves it, on a free port, in a thread."""
    from app.main import create_app

    app = create_app(settings.model_copy(update=limits))
    port = _free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, settings.shutdown_grace))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
