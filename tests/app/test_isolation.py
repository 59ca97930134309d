"""Tenants are isolated: another project's ids are unknown ids.

- Every route in the app's route table is walked with project B's key and project A's real ids:
  404 for an id in the URL (and the same answer as for an id that never existed when the id is in
  the body), 403 on the admin routes, and nothing changes in the database or in storage. A route
  that takes no id is listed in EXEMPT with the reason; a new route that is in neither table fails
  the test, so it cannot be missed.
- Lists show only the caller's rows.
- The services query a project's tables only through app/services/scope.py (or a listed exception).
"""

from __future__ import annotations

import ast

import pytest
from sqlalchemy import select

from app.core.db import session_scope
from app.core.ids import new_id
from app.models import Checkpoint, FineTunedModel, FineTuningJob, Project, UploadPart
from app.services import scope
from tests.conftest import REPO, TINY
from tests.data import chat_jsonl

# Routes that take no id of a project's object, and why they need no walk.
EXEMPT = {
    ("GET", "/openapi.json"): "the schema; no project data",
    ("GET", "/docs"): "the schema viewer; no project data",
    ("GET", "/docs/oauth2-redirect"): "part of the schema viewer; no project data",
    ("GET", "/redoc"): "the schema viewer; no project data",
    ("GET", "/healthz"): "process liveness; no project data",
    ("GET", "/readyz"): "readiness of database, broker, storage; no project data",
    ("GET", "/metrics"): "aggregate counters without ids; no project data",
    ("GET", "/"): "the dashboard page: static, it calls /v1 with the user's own key",
    ("GET", "/ui"): "redirects to the dashboard page; no project data",
    ("POST", "/v1/files"): "creates a file in the caller's project; takes no id",
    ("POST", "/v1/uploads"): "creates an upload in the caller's project; takes no id",
    ("POST", "/v1/webhooks"): "creates an endpoint in the caller's project; takes no id",
    ("GET", "/v1/models"): "a list: test_lists_show_only_the_callers_rows",
    ("GET", "/v1/fine-tunes"): "a list without a cursor: test_lists_show_only_the_callers_rows",
    ("GET", "/v1/webhooks"): "a list without a cursor: test_lists_show_only_the_callers_rows",
}

# (method, path) -> requests made with B's key; {file} etc. are A's ids. `expect` is a status, or
# "as-unknown": the same answer as for an id that does not exist anywhere.
CASES: dict[tuple[str, str], list[dict]] = {
    ("GET", "/v1/files"): [dict(params={"after": "{file}"}, expect=404)],
    ("GET", "/v1/files/{file_id}"): [dict(expect=404)],
    ("DELETE", "/v1/files/{file_id}"): [dict(expect=404)],
    ("GET", "/v1/files/{file_id}/content"): [dict(expect=404)],
    ("POST", "/v1/files/{file_id}/validate"): [dict(json={}, expect=404)],
    ("POST", "/v1/fine_tuning/jobs"): [dict(json={"model": TINY, "training_file": "{file}"}, expect="as-unknown"),
                                       dict(json={"model": TINY, "training_file": "{own_file}",
                                                  "validation_file": "{file}"}, expect="as-unknown")],
    ("GET", "/v1/fine_tuning/jobs"): [dict(params={"after": "{job}"}, expect=404)],
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): [dict(expect=404)],
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): [dict(expect=404)],
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): [dict(expect=404)],
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): [dict(expect=404)],
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): [dict(expect=404), dict(params={"stream": "true"}, expect=404)],
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): [dict(expect=404)],
    ("GET", "/v1/fine_tuning/jobs/{job_id}/export"): [dict(expect=404), dict(params={"kind": "merged"}, expect=404)],
    ("POST", "/v1/completions"): [dict(json={"model": "{model}", "prompt": "hi", "max_tokens": 2}, expect=404),
                                  dict(json={"model": "{checkpoint_model}", "prompt": "hi", "max_tokens": 2},
                                       expect=404)],
    ("POST", "/v1/chat/completions"): [
        dict(json={"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, expect=404)
        for m in ("{model}", "{checkpoint_model}")],
    ("GET", "/v1/models/{model_id}"): [dict(path={"model_id": m}, expect=404) for m in ("{model}", "{checkpoint_model}")],
    ("DELETE", "/v1/models/{model_id}"): [dict(path={"model_id": m}, expect=404)
                                          for m in ("{model}", "{checkpoint_model}")],
    ("POST", "/v1/evaluations"): [dict(json={"model": "{model}", "file_id": "{own_file}"}, expect="as-unknown")],
    ("GET", "/v1/evaluations"): [dict(params={"after": "{evaluation}"}, expect=404)],
    ("GET", "/v1/evaluations/{evaluation_id}"): [dict(expect=404)],
    ("POST", "/v1/fine-tunes"): [dict(json={"model": TINY, "training_file": "{file}"}, expect="as-unknown")],
    ("GET", "/v1/fine-tunes/{fine_tune_id}"): [dict(expect=404)],
    ("POST", "/v1/fine-tunes/{fine_tune_id}/cancel"): [dict(expect=404)],
    ("GET", "/v1/fine-tunes/{fine_tune_id}/events"): [dict(expect=404), dict(params={"stream": "true"}, expect=404)],
    ("POST", "/v1/uploads/{upload_id}/parts"): [dict(files={"data": ("p", b'{"x": 1}\n')}, expect=404)],
    ("POST", "/v1/uploads/{upload_id}/complete"): [dict(json={"part_ids": ["{part}"]}, expect=404)],
    ("POST", "/v1/uploads/{upload_id}/cancel"): [dict(expect=404)],
    ("DELETE", "/v1/webhooks/{endpoint_id}"): [dict(expect=404)],
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries"): [dict(expect=404)],
    # Admin routes: a project key is refused before anything is looked up.
    ("GET", "/v1/admin/projects"): [dict(expect=403)],
    ("POST", "/v1/admin/projects"): [dict(json={"name": "b-made-this"}, expect=403)],
    ("GET", "/v1/admin/keys"): [dict(expect=403)],
    ("POST", "/v1/admin/keys"): [dict(json={"project": "b-made-this"}, expect=403)],
    ("POST", "/v1/admin/keys/{key_id}/revoke"): [dict(expect=403)],
    ("POST", "/v1/admin/keys/{key_id}/rotate"): [dict(expect=403)],
    ("GET", "/v1/admin/base_models"): [dict(expect=403)],
}
PATH_PARAMS = {"file_id": "{file}", "job_id": "{job}", "fine_tune_id": "{job}", "evaluation_id": "{evaluation}",
               "upload_id": "{upload}", "endpoint_id": "{endpoint}", "key_id": "{key}", "model_id": "{model}"}


def route_table(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    found: set[tuple[str, str]] = set()

    def walk(routes) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)
                continue
            for method in getattr(route, "methods", None) or ():
                if method != "HEAD":
                    found.add((method, route.path.replace(":path}", "}")))

    walk(app.routes)
    return found


@pytest.fixture
def project_a(api, settings):
    """Project A with one of everything: file, job (with its events), checkpoint, fine-tuned
    model, evaluation, upload with a part, webhook endpoint."""
    ids = {}
    ids["file"] = api.upload(chat_jsonl()).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": ids["file"]})
    assert job.status_code == 200, job.text
    ids["job"] = job.json()["id"]
    upload = api.post("/v1/uploads", json={"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 100,
                                           "mime_type": "application/jsonl"}).json()
    ids["upload"] = upload["id"]
    ids["part"] = api.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("p", b'{"a": 1}\n')}).json()["id"]
    ids["endpoint"] = api.post("/v1/webhooks", json={"url": "https://example.com/hook"}).json()["id"]
    # Rows a finished training run and an evaluation would write (a real run takes minutes; the
    # routes under test refuse B before they look at the adapter files).
    with session_scope(settings.resolved_database_url) as session:
        row = session.scalar(select(FineTuningJob).where(FineTuningJob.id == ids["job"]))
        ids["model"] = f"ft:{TINY}:iso:{row.id[-8:]}"
        ids["checkpoint_model"] = f"ft:{TINY}:iso:{row.id[-8:]}:ckpt-step-1"
        session.add(FineTunedModel(id=ids["model"], project_pk=row.project_pk, job_pk=row.pk, base_model=TINY,
                                   adapter_path=str(settings.resolved_data_dir / "nowhere")))
        session.add(Checkpoint(id=new_id("ftckpt"), job_pk=row.pk, step_number=1, metrics={},
                               model_id=ids["checkpoint_model"], adapter_path=str(settings.resolved_data_dir / "x")))
        from app.models import ApiKey, Evaluation

        ids["evaluation"] = new_id("eval")
        session.add(Evaluation(id=ids["evaluation"], project_pk=row.project_pk, model=ids["model"], base_model=TINY,
                               file_id=ids["file"], status="queued"))
        ids["key"] = session.scalar(select(ApiKey.id).where(ApiKey.project_pk == row.project_pk))
    return ids


def _state(settings) -> dict:
    """Every row of every table a project owns (all projects), plus every file under the data dir."""
    rows = {}
    with session_scope(settings.resolved_database_url) as session:
        for model in scope.OWNED + (Project,):
            table = model.__table__
            rows[table.name] = [tuple(r) for r in session.execute(select(table).order_by(table.c.pk))]
        from app.models import ApiKey

        rows["api_keys"] = [tuple(r) for r in session.execute(select(ApiKey.__table__).order_by(ApiKey.pk))]
    root = settings.resolved_data_dir
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file())
    return {"rows": rows, "files": files}


def _fill(value, ids: dict):
    if isinstance(value, str):
        for name, real in ids.items():
            value = value.replace("{" + name + "}", real)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, tuple):
        return tuple(_fill(v, ids) for v in value)
    return value


def test_every_route_is_walked_or_exempt(client):
    table = route_table(client.app)
    assert not set(EXEMPT) & set(CASES)
    missing = table - set(EXEMPT) - set(CASES)
    assert not missing, f"routes neither walked nor exempt (add them to CASES or EXEMPT): {sorted(missing)}"
    stale = (set(EXEMPT) | set(CASES)) - table
    assert not stale, f"listed routes the app no longer has: {sorted(stale)}"
    for method, path in table - set(EXEMPT):  # a route with an id in its path is never exempt
        assert "{" not in path or (method, path) in CASES


def test_another_projects_ids_are_unknown_on_every_route(client, api, other_api, settings, project_a):
    own = {"own_file": other_api.upload(chat_jsonl()).json()["id"]}
    ids = {**project_a, **own}
    before = _state(settings)
    for (method, path), variants in sorted(CASES.items()):
        for variant in variants:
            variant = dict(variant)
            expect = variant.pop("expect")
            path_values = {name: PATH_PARAMS[name] for name in PATH_PARAMS if "{" + name + "}" in path}
            path_values.update(variant.pop("path", {}))
            url = path.format(**_fill(path_values, ids))
            kwargs = _fill(variant, ids)
            response = client.request(method, url, headers=other_api.headers, **kwargs)
            where = f"{method} {url} {kwargs}"
            if expect == "as-unknown":  # A's id in the body answers exactly as an id nobody has
                unknown = {n: f"{v.split('-')[0]}-doesnotexist000000000000" for n, v in project_a.items()}
                probe = client.request(method, url, headers=other_api.headers, **_fill(variant, {**unknown, **own}))
                assert response.status_code == probe.status_code and 400 <= response.status_code < 500, where
                got, ref = response.json()["error"], probe.json()["error"]
                assert (got["code"], got["param"], got["type"]) == (ref["code"], ref["param"], ref["type"]), where
                for name, real in project_a.items():
                    got["message"] = got["message"].replace(real, unknown[name])
                assert got["message"] == ref["message"], where
            else:
                assert response.status_code == expect, f"{where}: {response.status_code} {response.text[:300]}"
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, where
            for real in project_a.values():  # nothing of A's comes back, not even an echo of a name
                if real not in kwargs.__repr__() and real not in url:
                    assert real not in response.text, where
    assert _state(settings) == before, "a refused request changed the database or storage"
    # and A still has everything, untouched
    assert api.get(f"/v1/files/{project_a['file']}/content").content == chat_jsonl()
    assert api.get(f"/v1/fine_tuning/jobs/{project_a['job']}").json()["status"] != "cancelled"


def test_lists_show_only_the_callers_rows(api, other_api, project_a):
    for url in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/evaluations", "/v1/fine-tunes",
                "/v1/webhooks"):
        mine, theirs = api.get(url), other_api.get(url)
        assert mine.status_code == theirs.status_code == 200, url
        for name in ("file", "job", "model", "evaluation", "endpoint"):
            assert project_a[name] not in theirs.text, f"{url} shows A's {name} to B"
    assert project_a["file"] in api.get("/v1/files").text and project_a["model"] in api.get("/v1/models").text


# --- the one place: services query project tables only through scope.py ---------------------------
# (module, function) -> why it may query a project's table by primary key without the caller.
UNSCOPED_ALLOWED = {
    ("app/core/metrics.py", "collect"): "aggregate counts over all projects for /metrics; no ids, no rows",
    ("app/services/evaluations.py", "mark_enqueue_failed"): "by pk of a row the caller just created",
    ("app/services/event_stream.py", "_poll"): "by pk of a job the route loaded through scope.owned",
    ("app/services/events.py", "_newest_event_pk"): "add_event's previous event, for a job pk the caller "
                                                     "already owns / the worker",
    ("app/services/events.py", "events_since"): "the SSE follower, by pk of a job loaded through scope.owned",
    ("app/services/jobs.py", "announce_queue_positions"): "the one queue is shared by every project; each "
                                                          "job behind hears only its own position",
    ("app/services/job_state.py", "transition"): "by pk of a job loaded through scope.owned (or the worker's)",
    ("app/services/job_state.py", "claim"): "worker side: leases by job pk",
    ("app/services/job_state.py", "renew"): "worker side: leases by job pk",
    ("app/services/job_state.py", "hold"): "worker side: leases by job pk",
    ("app/services/job_state.py", "release"): "worker side: leases by job pk",
    ("app/services/queue.py", "send_job"): "by the id of a job the caller just created or resumed",
    ("app/services/webhook_sender.py", "record_new_deliveries"): "background sender: every project's endpoints",
    ("app/services/webhook_sender.py", "_claim"): "background sender, by delivery pk",
    ("app/services/webhook_sender.py", "attempt"): "background sender, by delivery pk",
}


def _unscoped_queries() -> set[tuple[str, str]]:
    owned_names = {m.__name__ for m in scope.OWNED}
    found = set()
    for path in sorted((REPO / "app").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in ("app/services/scope.py", "app/models.py"):
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                # sqlalchemy's select/update/delete, and session.get(Model, pk)
                is_query = isinstance(node.func, ast.Name) and node.func.id in ("select", "update", "delete")
                is_get = (isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                          and "session" in ast.unparse(node.func.value))
                if not (is_query or is_get):
                    continue
                if any(isinstance(n, ast.Name) and n.id in owned_names for a in node.args for n in ast.walk(a)):
                    found.add((rel, fn.name))
    return found


def test_project_tables_are_queried_only_through_scope():
    unscoped = _unscoped_queries()
    new = unscoped - set(UNSCOPED_ALLOWED)
    assert not new, f"query a project's table through app/services/scope.py (scoped/owned): {sorted(new)}"
    assert not set(UNSCOPED_ALLOWED) - unscoped, "stale entries in UNSCOPED_ALLOWED"


def test_routes_do_not_query_the_database_themselves():
    for path in (REPO / "app" / "api" / "routes").glob("*.py"):
        if path.name == "admin.py":  # projects and keys are not project-owned rows
            continue
        assert "from sqlalchemy import" not in path.read_text().replace("from sqlalchemy.orm import", ""), path


def test_scoped_refuses_a_table_no_project_owns():
    with pytest.raises(TypeError):
        scope.scoped(Project, 1)
    assert UploadPart in scope.THROUGH
