"""Which model a request names: a base model, a fine-tuned model, or one of its checkpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.auth import Caller
from app.core.config import Settings
from app.core.errors import APIError
from app.core.safe_loading import UnsafeModelError, check_adapter_dir
from app.models import Checkpoint, FineTunedModel, FineTuningJob
from app.protocol.models import ModelObject
from app.services.base_models import OWNER, find_base_model, list_base_models, refuse_unsafe
from app.services.scope import scoped
from app.services.storage import storage_for


@dataclass(frozen=True)
class ModelTarget:
    """What the inference engine needs: the base model's name and, for a fine-tune, its adapter
    and how the base was loaded when the adapter was trained ("nf4"/"int8": QLoRA)."""

    model_id: str
    base_model: str
    adapter_path: Path | None
    quantization: str = "none"


def model_not_found(model_id: str) -> APIError:
    return APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def resolve_model(session: Session, settings: Settings, caller: Caller, model_id: str) -> ModelTarget:
    base = find_base_model(settings, model_id)
    if base is not None:
        refuse_unsafe(base)
        return ModelTarget(model_id, model_id, None)
    row = session.scalar(scoped(FineTunedModel, caller).where(FineTunedModel.id == model_id))
    if row is not None:
        return ModelTarget(model_id, row.base_model, _adapter_dir(settings, model_id, row.adapter_path),
                           row.quantization)
    found = session.execute(scoped(Checkpoint, caller, Checkpoint, FineTuningJob)
                            .where(Checkpoint.model_id == model_id)).first()
    if found is not None:
        checkpoint, job = found
        return ModelTarget(model_id, job.model, _adapter_dir(settings, model_id, checkpoint.adapter_path),
                           checkpoint.quantization)
    raise model_not_found(model_id)


def _adapter_dir(settings: Settings, model_id: str, ref: str) -> Path:
    """The adapter's local directory; a model whose files are gone is not found (404, not 500)."""
    try:
        return check_adapter_dir(storage_for(settings, "jobs").local_dir(ref))
    except FileNotFoundError:
        raise model_not_found(model_id) from None
    except UnsafeModelError as exc:  # never handed to PEFT, which would unpickle a .bin
        raise APIError(400, f"The model '{model_id}' cannot be served: {exc}.", param="model",
                       code="model_not_supported") from None


def list_models(session: Session, settings: Settings, caller: Caller) -> list[ModelObject]:
    models = [ModelObject(id=m.name, created=m.created, owned_by=OWNER) for m in list_base_models(settings)]
    rows = session.scalars(scoped(FineTunedModel, caller).order_by(FineTunedModel.pk))
    models += [ModelObject(id=r.id, created=r.created_at, owned_by=caller.project_name) for r in rows]
    return models


def delete_model(session: Session, settings: Settings, caller: Caller, model_id: str) -> Path:
    """Delete the caller's fine-tuned model: its row, then its adapter files. Returns the adapter
    path (for the engine to unload). Base models cannot be deleted."""
    if find_base_model(settings, model_id) is not None:
        raise APIError(403, f"The model '{model_id}' is a base model and cannot be deleted.",
                       type="invalid_request_error", param="model", code="model_not_deletable")
    row = session.scalar(scoped(FineTunedModel, caller).where(FineTunedModel.id == model_id))
    if row is None:
        raise model_not_found(model_id)
    ref = row.adapter_path
    session.delete(row)
    session.commit()
    try:
        storage_for(settings, "jobs").delete_dir(ref)
    except ValueError:  # a path outside the jobs storage: never ours to delete
        logging.getLogger("whetstone.models").warning("adapter %s is outside the jobs storage; left in place", ref)
    return Path(ref)


def retrieve_model(session: Session, settings: Settings, caller: Caller, model_id: str) -> ModelObject:
    for model in list_models(session, settings, caller):
        if model.id == model_id:
            return model
    raise model_not_found(model_id)
