"""Server errors leak nothing: a real failure (storage that cannot be read, a database that has
lost a table) answers a generic OpenAI-shaped 500 carrying the request id, and the log line with
the full traceback carries the same id."""

from __future__ import annotations

import logging
import shutil

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.db import session_scope
from app.core.errors import public_reason
from app.models import File
from tests.conftest import Api, new_key
from tests.contract import assert_matches
from tests.data import chat_jsonl

LEAKS = ("Traceback", "File \"", ".py", "/tmp", "/work", "SELECT", "FROM ", "psycopg", "sqlalche",
         "IsADirectoryError", "UndefinedTable", "Errno")


def _assert_generic_500(response, request_id: str) -> None:
    assert response.status_code == 500
    assert_matches(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert request_id in error["message"] and response.headers["x-request-id"] == request_id
    for leak in LEAKS:
        assert leak not in response.text, leak


def _logged(caplog, request_id: str, needle: str) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name == "whetstone.errors" and request_id in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    record = records[0]
    assert record.request_id == request_id and record.exc_info
    assert needle in logging.Formatter().formatException(record.exc_info)  # the whole trace is in the log
    return record


def test_unreadable_storage_gives_a_generic_500_and_a_logged_trace(settings, caplog):
    from app.main import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(client, new_key(settings))
        file_id = api.upload(chat_jsonl()).json()["id"]
        with session_scope(settings.resolved_database_url) as session:
            key = session.scalar(select(File.storage_key).where(File.id == file_id))
        stored = client.app.state.storage.path(key)
        stored.unlink()
        stored.mkdir()  # the bytes' place now holds a directory: open() fails with IsADirectoryError
        caplog.set_level(logging.ERROR, logger="whetstone.errors")
        response = api.get(f"/v1/files/{file_id}/content", headers={"x-request-id": "req_storage_boom"})
        _assert_generic_500(response, "req_storage_boom")
        _logged(caplog, "req_storage_boom", "IsADirectoryError")
        shutil.rmtree(stored)


def test_a_database_error_gives_a_generic_500_and_a_logged_trace(fresh_postgres_url, settings, caplog):
    from app.main import create_app

    own = settings.model_copy(update={"database_url": fresh_postgres_url})
    with TestClient(create_app(own), raise_server_exceptions=False) as client:
        api = Api(client, new_key(own))
        assert api.get("/v1/evaluations").status_code == 200
        with psycopg.connect(fresh_postgres_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("DROP TABLE evaluations CASCADE")
        caplog.set_level(logging.ERROR, logger="whetstone.errors")
        response = api.get("/v1/evaluations")  # no request id given: the server makes one
        request_id = response.headers["x-request-id"]
        assert request_id.startswith("req_")
        _assert_generic_500(response, request_id)
        _logged(caplog, request_id, "evaluations")


@pytest.mark.parametrize("given", ["req\nFAKE LOG LINE", "<script>", "x" * 300, ""])
def test_a_request_id_that_is_not_plain_is_replaced(api, given):
    response = api.get("/v1/files", headers={"x-request-id": given})
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_") and response.headers["x-request-id"] != given


def test_public_reason_hides_paths_and_sql():
    reason = public_reason(FileNotFoundError(2, "No such file", "/srv/whetstone/data/jobs/ftjob-x/adapter"))
    assert "/srv" not in reason and "<path>" in reason and reason.startswith("FileNotFoundError")
    from sqlalchemy.exc import ProgrammingError

    sql = ProgrammingError("SELECT secret FROM api_keys WHERE key_hash = %s", {}, Exception("boom"))
    assert public_reason(sql) == "ProgrammingError: a database error occurred"
    assert public_reason(ValueError("learning rate must be positive")) == "ValueError: learning rate must be positive"


def test_an_adapter_that_fails_to_load_says_so_without_server_paths(api, settings):
    """A fine-tuned model whose stored adapter breaks while loading (here its config is a directory,
    so the error names the file's path): the client hears that it failed, never where it lives."""
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.models import FineTunedModel, FineTuningJob
    from tests.conftest import TINY
    from tests.data import chat_jsonl

    file_id = api.upload(chat_jsonl()).json()["id"]
    job_id = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id}).json()["id"]
    adapter = settings.resolved_data_dir / "jobs" / "broken-adapter"
    (adapter / "adapter_config.json").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    model_id = f"ft:{TINY}:broken:{job_id[-8:]}"
    with session_scope(settings.resolved_database_url) as session:
        job = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        session.add(FineTunedModel(id=model_id, project_pk=job.project_pk, job_pk=job.pk, base_model=TINY,
                                   adapter_path=str(adapter)))
    response = api.post("/v1/completions", json={"model": model_id, "prompt": "hi", "max_tokens": 2})
    assert response.status_code >= 400, response.text
    assert "could not be loaded" in response.json()["error"]["message"]
    assert str(settings.resolved_data_dir) not in response.text and "broken-adapter" not in response.text
