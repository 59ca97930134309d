"""Download a job's fine-tuned model as a zip of safetensors: the adapter, or the merged model."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from app.core.config import Settings
from app.core.errors import invalid
from app.models import FineTuningJob
from app.services.base_models import ensure_base_model
from app.services.storage import storage_for

EXPORT_KINDS = ("adapter", "merged")


def export_archive(settings: Settings, job: FineTuningJob, kind: str, adapter_ref: str | None) -> Path:
    """The zip for ``kind`` (built once, then reused); 400 while the job has no fine-tuned model.
    ``adapter_ref``: where the job's fine-tuned model stored its adapter (jobs storage)."""
    try:
        adapter_dir = storage_for(settings, "jobs").local_dir(adapter_ref) if adapter_ref else None
    except FileNotFoundError:
        adapter_dir = None
    if adapter_dir is None or not (adapter_dir / "adapter_model.safetensors").is_file():
        raise invalid(f"Job {job.id} has no fine-tuned model to export (status: {job.status}).", param="job_id",
                      code="model_not_ready")
    export_dir = settings.jobs_dir / job.id / "export"
    archive = export_dir / f"{kind}.zip"
    if archive.is_file():
        return archive
    source = adapter_dir
    if kind == "merged":
        from worker.training.export import merge_adapter

        source = export_dir / "merged"
        if not (source / "config.json").is_file():
            merge_adapter(ensure_base_model(settings, job.model), adapter_dir, source)
    export_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{kind}.zip.", dir=export_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted(source.iterdir()):
                if path.is_file():
                    zf.write(path, path.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return archive
