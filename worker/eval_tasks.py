"""The evaluation task: a worker runs one evaluation by id (queued -> in_progress -> completed | failed).

Like the training task, the database owns the state; each move is a conditional UPDATE, so a
redelivered message does nothing. The per-example outputs are stored as a result file.
"""

from __future__ import annotations

import json
import logging

from sqlalchemy import select, update

from app.core.auth import Caller
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.errors import public_reason
from app.core.ids import new_id, now
from app.models import Evaluation, File, Project
from app.services.base_models import ensure_base_model
from app.services.models import resolve_model
from app.services.storage import storage_for
from worker.celery_app import EVAL_TASK, app

log = logging.getLogger("whetstone.worker")


@app.task(name=EVAL_TASK)
def evaluate_task(evaluation_id: str) -> None:
    run_evaluation(get_settings(), evaluation_id)


def _move(url: str, pk: int, expected: str, **values) -> bool:
    with session_scope(url) as session:
        return bool(session.execute(update(Evaluation).where(Evaluation.pk == pk, Evaluation.status == expected)
                                    .values(**values)).rowcount)


def run_evaluation(settings: Settings, evaluation_id: str) -> None:
    from worker.evaluation import build_report, evaluate

    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = session.scalar(select(Evaluation).where(Evaluation.id == evaluation_id))
        if row is None or row.status != "queued":
            log.info("evaluation %s is not queued; nothing to do", evaluation_id)
            return
        project = session.get(Project, row.project_pk)
        caller = Caller(project.pk, project.id, project.name)
        file = session.scalar(select(File).where(File.id == row.file_id, File.project_pk == row.project_pk))
        pk, model_id, max_tokens = row.pk, row.model, row.max_tokens
        try:
            target = resolve_model(session, settings, caller, model_id)
        except Exception:
            target = None
    if not _move(url, pk, "queued", status="in_progress"):
        return
    storage = storage_for(settings, "files")
    try:
        try:
            if target is None or file is None:
                raise FileNotFoundError
            data_path = storage.local_path(file.storage_key)
        except FileNotFoundError:
            raise LookupError("the model or the evaluation file no longer exists") from None
        result = evaluate(ensure_base_model(settings, target.base_model), target.adapter_path,
                          data_path, max_new_tokens=max_tokens, quantization=target.quantization)
        report = build_report(result)
        content = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result["samples"]).encode()
        file_id = new_id("file")
        key = f"{project.id}/{file_id}.jsonl"
        with storage.writer(key) as writer:
            writer.write(content)
            writer.commit()
        with session_scope(url) as session:
            session.add(File(id=file_id, project_pk=project.pk, filename=f"{evaluation_id}_samples.jsonl",
                             purpose="fine-tune-results", bytes=len(content), storage_key=key))
            session.flush()
            done = session.execute(update(Evaluation).where(Evaluation.pk == pk, Evaluation.status == "in_progress")
                                   .values(status="completed", report=report, result_file=file_id,
                                           finished_at=now())).rowcount
            if not done:
                session.rollback()
                storage.delete(key)
    except Exception as exc:  # the user sees the reason; the log keeps the trace
        log.exception("evaluation %s failed", evaluation_id)
        _move(url, pk, "in_progress", status="failed", finished_at=now(),
              error={"code": "evaluation_failed", "message": public_reason(exc, 1000),
                     "param": None})
