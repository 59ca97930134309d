"""One place for every knob. Environment variables use the WHETSTONE_ prefix."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHETSTONE_", extra="ignore")

    data_dir: Path = Path(".whetstone")
    # Empty means "derive from data_dir" (SQLite file, SQL broker): the embedded default.
    database_url: str = ""
    broker_url: str = ""
    base_models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # Celery queue the API sends job ids to and the workers consume.
    queue: str = "whetstone"
    max_upload_bytes: int = 1 << 30
    # Inference
    max_tokens_default: int = 256
    # -- serving (issue 6) --
    # Sequences decoded together in one forward; waiting beyond `inference_max_queue` gets 429.
    inference_max_batch_size: int = 32
    inference_max_queue: int = 64
    # Fine-tuned LoRA adapters kept loaded on each base model (least recently used goes first).
    inference_adapter_cache_size: int = 8
    # How long a request waits for its base model to load before a 503 with Retry-After.
    inference_load_wait_seconds: float = 30.0
    # When set (e.g. http://inference:8001), the API proxies completions and chat to it.
    inference_url: str = ""
    # Seconds between DB polls for SSE followers when no Redis pushes events (embedded).
    events_poll_interval: float = 0.5
    # Uploads API (/v1/uploads): the file may exceed max_upload_bytes, each part may not.
    max_upload_part_bytes: int = 64 << 20
    max_upload_total_bytes: int = 8 << 30
    upload_expires_seconds: int = 3600
    # Webhooks: a background sender in the API process; retry n waits backoff * 2**(n-1) seconds.
    webhook_sender: bool = True
    webhook_poll_interval: float = 1.0
    webhook_backoff_seconds: float = 5.0
    webhook_max_attempts: int = 8
    webhook_timeout_seconds: float = 10.0
    # -- job orchestration (issue 14) --
    # Redis for live event push (empty: the broker's, when it is Redis); SSE keep-alive comment period.
    events_redis_url: str = ""
    events_heartbeat: float = 15.0
    # Job orchestration (app/services/job_state.py, worker/reaper.py). A running job's worker renews
    # its lease every lease_seconds/3; a lease left to expire hands the job to another worker.
    lease_seconds: float = 30.0
    reap_interval: float = 5.0
    # Runs lost to a dead worker before the job fails with error.code "max_attempts_exceeded".
    max_attempts: int = 3
    # A waiting job whose last broker message is older than this gets a new one (lost messages).
    requeue_after: float = 300.0
    # Jobs of one project running at once (0: no limit); the others wait in `queued`.
    max_running_jobs_per_project: int = 4
    # Optimizer steps between resumable checkpoints (besides one per epoch); 0: epoch ends only.
    checkpoint_every: int = 0
    # --- Experiment trackers (issue 13; the optional `tracking` extra) ---
    # wandb runs of jobs with a wandb integration: "offline" (files under the job's folder, no
    # network; `wandb sync` later) or "online" (needs WANDB_API_KEY).
    wandb_mode: Literal["offline", "online"] = "offline"
    # MLflow: every job logs its parameters and per-step metrics here when set
    # (file:///path, sqlite:///path.db, http://host:5000); empty: off.
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "whetstone"
    # Redis broker: seconds before an unacknowledged message is handed to another worker.
    broker_visibility_timeout: float = 3600.0
    # Seconds to wait for the broker when the API sends a job id.
    broker_send_timeout: float = 5.0
    # --- Deployment and operations (issue 7) ---
    # Where uploads, results, adapters and checkpoints live: a local directory under data_dir
    # (one machine, or a volume every host mounts) or an S3-compatible bucket (many hosts).
    storage_backend: Literal["local", "s3"] = "local"
    # The local backend writes stored files past the page cache (O_DIRECT) where the file system allows
    # it; false: through the page cache (for a network file system whose direct writes are slow).
    storage_direct_io: bool = True
    s3_bucket: str = ""
    # Key prefix inside the bucket (e.g. "whetstone/"); areas "files/" and "jobs/" go under it.
    s3_prefix: str = ""
    # Empty: AWS's endpoint for the region; set it for MinIO, Ceph, R2, ...
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # Empty: boto3's usual chain (AWS_* variables, instance role, ~/.aws).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # Logging: level name, and "json" (one object per line, with request/job ids) or "text".
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"
    # Seconds /readyz waits for each dependency before calling it unreachable.
    ready_timeout: float = 3.0
    # Seconds the API lets in-flight requests finish after SIGTERM before closing them.
    shutdown_grace: float = 10.0
    # Seconds `whetstone serve` then gives its embedded worker to checkpoint the job it runs and
    # hand it back to the queue (Celery's warm shutdown), before a cold stop.
    worker_shutdown_grace: float = 90.0
    # Port of a worker's own Prometheus endpoint (GPU memory of its host); 0: none.
    worker_metrics_port: int = 0

    # --- Quotas and limits (issue 16) ---
    # Largest body of any other request (JSON), in bytes; uploads have max_upload_bytes and
    # max_upload_part_bytes. Checked from Content-Length before reading, and counted while reading.
    max_request_body_bytes: int = 8 << 20
    # Uploaded JSONL: longest line and most lines a file may have.
    max_upload_line_bytes: int = 4 << 20
    max_upload_lines: int = 1_000_000
    # Processes that check large uploads' lines while the API process stores the bytes, each on a core
    # of its own, two at most per upload (app/services/upload_check_process.py); 0: checked in the API
    # process; -1: none where the compiled line scanner is built (it checks in a thread of the API
    # process, without the interpreter lock, faster than the processes), else one per core beyond
    # the first, at most 4 (`resolved_upload_check_processes`).
    upload_check_processes: int = -1
    # Bytes of files (uploads and results) one project may keep (0: no limit).
    max_storage_bytes_per_project: int = 50 << 30
    # Jobs of one project waiting to run (validating_files/queued/paused) beyond which create gets 429 (0: no limit).
    max_queued_jobs_per_project: int = 20
    # Requests per minute per API key (429 with Retry-After beyond it; 0: no limit). Counted in Redis
    # when one is configured (events_redis_url or a Redis broker), else in this process.
    rate_limit_requests_per_minute: int = 600
    # Job event streams (SSE) one API key may hold open at once in one API process (429 beyond it; 0: no limit).
    max_streams_per_key: int = 8
    # Seconds a stream's write may wait on a client that stops reading before it is dropped.
    sse_send_timeout: float = 30.0
    # Seconds a stream lives at most; the client reconnects with Last-Event-ID (0: no limit).
    sse_max_stream_seconds: float = 3600.0

    @property
    def resolved_upload_check_processes(self) -> int:
        if self.upload_check_processes >= 0:
            return self.upload_check_processes
        from worker.training.validation import COMPILED_SCANNER

        return 0 if COMPILED_SCANNER else max(0, min(4, (os.cpu_count() or 1) - 1))

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'whetstone.sqlite3'}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{self.resolved_data_dir / 'broker.sqlite3'}"

    @property
    def broker_is_embedded(self) -> bool:
        return self.resolved_broker_url.startswith("sqla+")

    @property
    def storage_dir(self) -> Path:
        return self.resolved_data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        """Adapters and checkpoints, one folder per job."""
        return self.resolved_data_dir / "jobs"

    @property
    def resolved_base_models_dir(self) -> Path:
        if self.base_models_dir is not None:
            return self.base_models_dir.expanduser().resolve()
        return self.resolved_data_dir / "base_models"

    def ensure_dirs(self) -> None:
        for path in (self.resolved_data_dir, self.storage_dir, self.jobs_dir, self.resolved_base_models_dir):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
