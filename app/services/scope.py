"""The one place where a query on a project's rows is restricted to that project.

Every read of user-owned rows on behalf of a caller goes through `scoped()` (a `select` already
filtered to the project) or `owned()` (one row by id, or a 404 that says nothing about other
projects). Rows that belong to a project through a parent (a job's events and checkpoints, an
upload's parts, an endpoint's deliveries) are joined to that parent here, so the filter cannot be
left out. tests/app/test_isolation.py checks that the services query owned tables only through
this module (or a listed exception), and walks every route with another project's ids.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.core.errors import not_found
from app.models import (
    Checkpoint,
    Evaluation,
    File,
    FineTunedModel,
    FineTuningJob,
    IdempotencyKey,
    JobEvent,
    Upload,
    UploadPart,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

T = TypeVar("T")

# Tables with their own project_pk.
DIRECT = (File, FineTuningJob, FineTunedModel, Evaluation, Upload, WebhookEndpoint, IdempotencyKey)
# Tables owned through a parent: the joins from the table up to a DIRECT one.
THROUGH: dict[type, list[tuple[type, Any]]] = {
    JobEvent: [(FineTuningJob, JobEvent.job_pk == FineTuningJob.pk)],
    Checkpoint: [(FineTuningJob, Checkpoint.job_pk == FineTuningJob.pk)],
    UploadPart: [(Upload, UploadPart.upload_pk == Upload.pk)],
    WebhookDelivery: [(WebhookEndpoint, WebhookDelivery.endpoint_pk == WebhookEndpoint.pk)],
    WebhookAttempt: [(WebhookDelivery, WebhookAttempt.delivery_pk == WebhookDelivery.pk),
                     (WebhookEndpoint, WebhookDelivery.endpoint_pk == WebhookEndpoint.pk)],
}
OWNED = DIRECT + tuple(THROUGH)


def _project_pk(caller: Any) -> int:
    """A Caller, or a bare project pk (the CLI, which has no key)."""
    return caller if isinstance(caller, int) else caller.project_pk


def restrict(query: Select, model: type, caller: Any) -> Select:
    """`query` (which selects from `model`) limited to the caller's project."""
    if model in DIRECT:
        return query.where(model.project_pk == _project_pk(caller))
    if model not in THROUGH:
        raise TypeError(f"{model.__name__} is not a project-owned table")
    for parent, on in THROUGH[model]:
        query = query.join(parent, on)
    owner = THROUGH[model][-1][0]
    return query.where(owner.project_pk == _project_pk(caller))


def scoped(model: type[T], caller: Any, *columns: Any) -> Select:
    """`select(model)` (or `select(*columns)` from it) for the caller's project only."""
    query = select(*columns).select_from(model) if columns else select(model)
    return restrict(query, model, caller)


def owned(session: Session, model: type[T], caller: Any, object_id: str, *, kind: str,
          param: str | None = None, column: Any = None, lock: bool = False) -> T:
    """The caller's row with this id (or `column` == object_id); otherwise 404 `No such <kind>`.
    `lock`: SELECT ... FOR UPDATE (of this row only), held until the transaction ends."""
    column = model.id if column is None else column
    query = scoped(model, caller).where(column == object_id)
    if lock:
        query = query.with_for_update(of=model)
    row = session.scalar(query)
    if row is None:
        raise not_found(kind, object_id, param=param)
    return row
