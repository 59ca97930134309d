"""Fine-tuning jobs API wire models (OpenAI's `fine_tuning.job` and friends)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Auto = Literal["auto"]
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512


def check_metadata(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"at most {METADATA_MAX_PAIRS} key-value pairs are allowed, got {len(value)}")
    for key, item in value.items():
        if not key or len(key) > METADATA_MAX_KEY:
            raise ValueError(f"keys must be 1 to {METADATA_MAX_KEY} characters, got {len(key)} for {key[:70]!r}")
        if len(item) > METADATA_MAX_VALUE:
            raise ValueError(f"values must be at most {METADATA_MAX_VALUE} characters, got {len(item)} for key {key!r}")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(check_metadata)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"
    # Whetstone's knobs beyond OpenAI's three (training helper, issue 13); absent = the default
    # in worker/training/config.py's table. Stored only when given.
    weight_decay: Annotated[float, Field(ge=0, le=1)] | None = None
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = None
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=64)] | None = None
    max_seq_len: Annotated[int, Field(ge=32, le=32768)] | None = None
    eval_interval: Annotated[int, Field(ge=1)] | None = None
    early_stopping_patience: Annotated[int, Field(ge=1, le=100)] | None = None
    prompt_loss_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    gradient_checkpointing: bool | None = None
    lora_r: Annotated[int, Field(ge=1, le=256)] | None = None
    lora_alpha: Annotated[int, Field(ge=1, le=1024)] | None = None
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    use_dora: bool | None = None
    train_top_k_layers: Annotated[int, Field(ge=1, le=1000)] | None = None
    # after train_top_k_layers, which _one_layer_choice reads
    freeze_first_n_layers: Annotated[int, Field(ge=1, le=1000)] | None = None
    quantization: Literal["none", "nf4", "int8"] | None = None
    full_finetune_layers: Annotated[list[Annotated[int, Field(ge=0, le=1000)]], Field(min_length=1)] | None = None

    @field_validator("freeze_first_n_layers")
    @classmethod
    def _one_layer_choice(cls, value: int | None, info: ValidationInfo) -> int | None:
        """A 400 naming freeze_first_n_layers when train_top_k_layers (validated before it) is given too."""
        if value is not None and info.data.get("train_top_k_layers") is not None:
            raise ValueError("freeze_first_n_layers and train_top_k_layers both choose the adapted layers: give one")
        return value


class DpoHyperparameters(Hyperparameters):
    # OpenAI's DPO beta: "auto" is 0.1 (worker/training/config.py)
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class WandbSettings(BaseModel):
    """OpenAI's `integrations[].wandb`: the run's project, and optionally its name, entity and tags."""
    model_config = ConfigDict(extra="forbid")
    project: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(max_length=128)] | None = None
    entity: Annotated[str, Field(max_length=128)] | None = None
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=50)] | None = None


class Integration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["wandb"]
    wandb: WandbSettings


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: Metadata | None = None
    integrations: Annotated[list[Integration], Field(max_length=5)] | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    integrations: list[dict[str, Any]] | None = None
    seed: int
    estimated_finish: int | None = None
    method: dict[str, Any]
    metadata: dict[str, str] | None = None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] = Field(default_factory=dict)


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]
