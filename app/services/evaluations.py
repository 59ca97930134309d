"""Evaluations: create (validated, enqueued after commit), list, retrieve."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.config import Settings
from app.core.errors import APIError, invalid, not_found
from app.core.ids import new_id, now
from app.models import Evaluation
from app.protocol.evaluations import CreateEvaluationRequest, CriterionResult, DataSource, ResultCounts
from app.protocol.evaluations import Evaluation as EvaluationWire
from app.services.files import get_file
from app.services.models import resolve_model
from app.services.scope import scoped
from worker.evaluation import report_table


def to_wire(row: Evaluation) -> EvaluationWire:
    counts = criteria = None
    if row.report:
        total = row.report["n_examples"]
        passed = row.report.get("exact_matches", 0)
        counts = ResultCounts(total=total, passed=passed, failed=total - passed)
        criteria = [CriterionResult(testing_criteria="exact_match", passed=passed, failed=total - passed)]
    return EvaluationWire(
        id=row.id, created_at=row.created_at, finished_at=row.finished_at, status=row.status, model=row.model,
        base_model=row.base_model, data_source=DataSource(source={"type": "file_id", "id": row.file_id}),
        result_counts=counts, per_testing_criteria_results=criteria, report=row.report,
        report_table=report_table(row.report) if row.report else None, result_file=row.result_file, error=row.error)


def create_evaluation(session: Session, settings: Settings, caller: Caller,
                      request: CreateEvaluationRequest) -> Evaluation:
    try:
        target = resolve_model(session, settings, caller, request.model)
    except APIError as exc:
        raise invalid(exc.message, param="model", code="model_not_found") from None
    if target.adapter_path is None:
        raise invalid(f"'{request.model}' is a base model; evaluate a fine-tuned model (it is compared with its base).",
                      param="model", code="invalid_model")
    try:
        file = get_file(session, caller, request.file_id)
    except APIError:
        raise invalid(f"invalid file_id: no file '{request.file_id}' in this project", param="file_id",
                      code="invalid_file_id") from None
    if file.purpose != "fine-tune":
        raise invalid(f"invalid file_id: file '{file.id}' has purpose '{file.purpose}', expected 'fine-tune'",
                      param="file_id", code="invalid_file_id")
    row = Evaluation(id=new_id("eval"), project_pk=caller.project_pk, model=request.model,
                     base_model=target.base_model, file_id=file.id, max_tokens=request.max_tokens, status="queued")
    session.add(row)
    session.flush()
    return row


def get_evaluation(session: Session, caller: Caller, evaluation_id: str) -> Evaluation:
    row = session.scalar(scoped(Evaluation, caller).where(Evaluation.id == evaluation_id))
    if row is None:
        raise not_found("evaluation", evaluation_id)
    return row


def list_evaluations(session: Session, caller: Caller, *, limit: int, after: str | None) -> tuple[list[Evaluation], bool]:
    query = scoped(Evaluation, caller)
    if after:
        query = query.where(Evaluation.pk < get_evaluation(session, caller, after).pk)
    rows = list(session.scalars(query.order_by(Evaluation.pk.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def mark_enqueue_failed(session: Session, row: Evaluation, reason: str) -> None:
    session.execute(update(Evaluation).where(Evaluation.pk == row.pk, Evaluation.status == "queued")
                    .values(status="failed", finished_at=now(), error={"code": "queue_unavailable", "message": reason, "param": None}))
