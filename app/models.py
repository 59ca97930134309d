"""Database tables (SQLAlchemy 2, typed). Wire shapes live in app/protocol, not here.

Every table has an integer `pk` (insertion order, used for cursors and joins) and,
where clients see the object, a string `id` with an OpenAI-like prefix.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.core.ids import now

# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets a BIGINT.
PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    # "project" keys use one project's API; "admin" keys (no project) manage projects, keys, base models.
    role: Mapped[str] = mapped_column(String(16), default="project", server_default="project")
    project_pk: Mapped[int | None] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), index=True,
                                                   nullable=True)
    # sha256 of the secret; the secret itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    project: Mapped[Project | None] = relationship()
    __table_args__ = (CheckConstraint("(role = 'project' AND project_pk IS NOT NULL) OR "
                                      "(role = 'admin' AND project_pk IS NULL)", name="ck_api_keys_role_project"),)


class File(Base):
    __tablename__ = "files"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    # Path relative to the storage root; never derived from the client's filename.
    storage_key: Mapped[str] = mapped_column(String(256))
    # For training data: "chat" or "completion", and the number of examples.
    data_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    n_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    __table_args__ = (Index("ix_files_project_pk_pk", "project_pk", "pk"),)


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    # As requested ("auto" kept) and, once the worker has seen the data, as resolved.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    resolved_hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="validating_files")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    # Set for jobs created through the legacy /v1/fine-tunes API: its options beyond the
    # hyper-parameters (classification metrics); also selects the legacy model name and results.
    legacy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # OpenAI's `method.type` ("supervised" or "dpo"), and the job's `integrations` as the client gave them.
    method_type: Mapped[str] = mapped_column(String(16), default="supervised", server_default="supervised")
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Orchestration (app/services/job_state.py): who holds the job and until when (unix seconds, float),
    # runs lost to a dead worker, the last time a broker message was sent for it, the forecast end.
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lost_attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    project: Mapped[Project] = relationship()
    __table_args__ = (Index("ix_jobs_project_pk_pk", "project_pk", "pk"),
                      Index("ix_jobs_status", "status"))


class JobEvent(Base):
    __tablename__ = "job_events"
    # pk doubles as the SSE event id: strictly increasing, so Last-Event-ID resumes exactly.
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("fine_tuning_jobs.pk", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    __table_args__ = (Index("ix_job_events_job_pk_pk", "job_pk", "pk"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("fine_tuning_jobs.pk", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_id: Mapped[str] = mapped_column(String(300), unique=True)
    adapter_path: Mapped[str] = mapped_column(String(512))
    # How the base was loaded while training ("none", "nf4", "int8"): served on that base.
    quantization: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class FineTunedModel(Base):
    __tablename__ = "fine_tuned_models"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(300), unique=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), index=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("fine_tuning_jobs.pk", ondelete="CASCADE"))
    base_model: Mapped[str] = mapped_column(String(256))
    adapter_path: Mapped[str] = mapped_column(String(512))
    # How the base was loaded while training ("none"; "nf4" or "int8" for QLoRA): the adapter is
    # served on a base loaded the same way (app/services/inference.py).
    quantization: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class IdempotencyKey(Base):
    """A POST's `Idempotency-Key`: the same key returns the same object; a different body is refused."""

    __tablename__ = "idempotency_keys"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    __table_args__ = (UniqueConstraint("project_pk", "scope", "key", name="uq_idempotency_keys_project_scope_key"),)


# --- evaluations (issue 9) ---
class Evaluation(Base):
    """A fine-tuned model against its base on a held-out file (run by a worker)."""

    __tablename__ = "evaluations"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(300))  # the fine-tuned model (or checkpoint) id
    base_model: Mapped[str] = mapped_column(String(256))
    file_id: Mapped[str] = mapped_column(String(64))
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (Index("ix_evaluations_project_pk_pk", "project_pk", "pk"),)

# --- Uploads API and webhooks (issue 15) ---------------------------------------------------


class Upload(Base):
    """A file sent in parts (`/v1/uploads`); completing it validates and creates a File."""

    __tablename__ = "uploads"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger)


class UploadPart(Base):
    __tablename__ = "upload_parts"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    upload_pk: Mapped[int] = mapped_column(ForeignKey("uploads.pk", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    project_pk: Mapped[int] = mapped_column(ForeignKey("projects.pk", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Standard Webhooks secret, "whsec_" + base64 of the signing key.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookDelivery(Base):
    """One event for one endpoint; unique per (endpoint, job), as a job ends only once."""

    __tablename__ = "webhook_deliveries"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_pk: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.pk", ondelete="CASCADE"))
    job_pk: Mapped[int] = mapped_column(ForeignKey("fine_tuning_jobs.pk", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Unix milliseconds; also the claim: a sender moves it forward before it tries.
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    __table_args__ = (UniqueConstraint("endpoint_pk", "job_pk", name="uq_webhook_deliveries_endpoint_job"),
                      Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"))


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    delivery_pk: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.pk", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[int] = mapped_column(BigInteger, default=now)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
