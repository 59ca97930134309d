"""Legacy fine-tunes API wire models (`fine-tune`, `fine-tune-event`), as the openai 0.28 CLI
sends and reads them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.protocol.files import FileObject

LEGACY_STATUSES = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class CreateFineTuneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    training_file: str
    validation_file: str | None = None
    model: str
    n_epochs: Annotated[int, Field(ge=1, le=50)] = 4
    batch_size: Annotated[int, Field(ge=1, le=256)] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | None = None
    prompt_loss_weight: Annotated[float, Field(ge=0, le=1)] = 0.01
    compute_classification_metrics: bool = False
    classification_n_classes: Annotated[int, Field(ge=2, le=1000)] | None = None
    classification_positive_class: str | None = None
    classification_betas: list[Annotated[float, Field(gt=0)]] | None = None
    suffix: str | None = Field(None, max_length=40, pattern=r"^[A-Za-z0-9_-]*$")

    def classification_options(self) -> dict[str, Any]:
        names = ("compute_classification_metrics", "classification_n_classes", "classification_positive_class",
                 "classification_betas")
        return {n: getattr(self, n) for n in names if getattr(self, n) not in (None, False)}


class FineTuneEvent(BaseModel):
    object: Literal["fine-tune-event"] = "fine-tune-event"
    created_at: int
    level: str
    message: str


class FineTune(BaseModel):
    id: str
    object: Literal["fine-tune"] = "fine-tune"
    model: str
    created_at: int
    updated_at: int
    fine_tuned_model: str | None
    hyperparams: dict[str, Any]
    organization_id: str
    status: LEGACY_STATUSES
    training_files: list[FileObject]
    validation_files: list[FileObject]
    result_files: list[FileObject]
    events: list[FineTuneEvent] | None = None


class FineTuneEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuneEvent]


class FineTuneList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTune]
