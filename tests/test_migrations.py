"""Migrations run forward and back on both databases, and match the models."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.cli import migrate_database
from app.core.config import Settings
from app.models import Base
from tests.conftest import POSTGRES_ADMIN, REPO

TABLES = {"projects", "api_keys", "files", "fine_tuning_jobs", "job_events", "checkpoints", "fine_tuned_models",
          "evaluations", "uploads", "upload_parts", "webhook_endpoints", "webhook_deliveries", "webhook_attempts",
          "idempotency_keys"}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite3'}"
        return
    name = f"whetstone_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_matches_models_and_downgrade_removes_everything(empty_database):
    migrate_database(Settings(database_url=empty_database))
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        assert TABLES <= set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "migrations"))
    config.set_main_option("sqlalchemy.url", empty_database)
    command.downgrade(config, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) & TABLES == set()
    engine.dispose()


def test_existing_qlora_fine_tunes_get_their_quantization(tmp_path):
    """Rows from before the column: a job trained with quantization nf4 serves on its 4-bit base."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0002_orchestration")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO projects (pk, id, name, created_at) VALUES (1, 'proj-1', 'p', 0)"))
        for pk, hyper in ((1, '{"quantization": "nf4"}'), (2, '{"n_epochs": 2}')):
            conn.execute(text("INSERT INTO fine_tuning_jobs (pk, id, project_pk, model, training_file, seed, "
                              "hyperparameters, status, result_files, created_at, lost_attempts) VALUES "
                              f"({pk}, 'ftjob-{pk}', 1, 'm', 'file-1', 0, :h, 'succeeded', '[]', 0, 0)"), {"h": hyper})
            conn.execute(text("INSERT INTO fine_tuned_models (id, project_pk, job_pk, base_model, adapter_path, "
                              f"created_at) VALUES ('ft:m:p::{pk}', 1, {pk}, 'm', 'a{pk}', 0)"))
            conn.execute(text("INSERT INTO checkpoints (id, job_pk, step_number, metrics, model_id, adapter_path, "
                              f"created_at) VALUES ('ftckpt-{pk}', {pk}, 1, '{{}}', 'ft:m:p::{pk}:ckpt-step-1', 'c', 0)"))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        for table in ("fine_tuned_models", "checkpoints"):
            rows = dict(conn.execute(text(f"SELECT job_pk, quantization FROM {table}")).all())
            assert rows == {1: "nf4", 2: "none"}, table
    engine.dispose()
