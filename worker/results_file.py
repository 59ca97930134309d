"""A job's results file (`result_files`): one CSV row per logged step, stored as a File of
purpose `fine-tune-results`. Jobs get OpenAI's step-metrics columns first (step, train_loss,
train_accuracy, valid_loss, valid_mean_token_accuracy), then learning_rate and tokens_per_second.
DPO jobs learn no token, so their accuracy columns hold the reward accuracy (the share of pairs
whose preferred reply gets the higher reward) and four columns follow: train_reward_margin,
valid_reward_margin (mean chosen minus rejected reward), train_chosen_reward,
train_rejected_reward. Legacy fine-tunes get their own columns (worker/legacy_results.py), with
the classification metrics they asked for on the last row."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from app.core.db import session_scope
from app.core.ids import new_id
from app.models import File
from app.services import job_state as state
from worker import legacy_results

if TYPE_CHECKING:
    from worker.job_run import JobRun

# (column, key in the training loop's metric rows)
STEP_METRICS = [("step", "step"), ("train_loss", "train_loss"), ("train_accuracy", "train_mean_token_accuracy"),
                ("valid_loss", "valid_loss"), ("valid_mean_token_accuracy", "valid_mean_token_accuracy"),
                ("learning_rate", "learning_rate"), ("tokens_per_second", "tokens_per_second")]
DPO_METRICS = ([(name, {"train_accuracy": "train_reward_accuracy",
                        "valid_mean_token_accuracy": "valid_reward_accuracy"}.get(name, key))
                for name, key in STEP_METRICS]
               + [(name, name) for name in ("train_reward_margin", "valid_reward_margin", "train_chosen_reward",
                                            "train_rejected_reward")])


def columns_for(job) -> list[tuple[str, str]]:  # noqa: ANN001 - a FineTuningJob row
    if job.legacy is not None:
        return legacy_results.COLUMNS
    return DPO_METRICS if job.method_type == "dpo" else STEP_METRICS


def results_csv(metrics: list[dict], columns: list[tuple[str, str]], last_row: dict[str, float] | None = None) -> bytes:
    """One row per logged step; `last_row`'s values (sorted by name) as extra columns, filled on the last row only."""
    extra = sorted(last_row or {})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([name for name, _ in columns] + extra)
    for i, row in enumerate(metrics):
        values = [row.get(key) for _, key in columns]
        values += [last_row[k] if i == len(metrics) - 1 else None for k in extra]
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue().encode()


def store_results(run: JobRun, metrics: list[dict], classification: dict | None = None) -> str:
    """Write the job's results file; returns its file id."""
    content = results_csv(metrics, columns_for(run.job), classification)
    file_id = new_id("file")
    key = f"{run.job.project.id}/{file_id}.csv"
    with run.storage.writer(key) as w:
        w.write(content)
        w.commit()
    with session_scope(run.url) as session:
        state.hold(session, run.job.pk, run.owner)
        session.add(File(id=file_id, project_pk=run.job.project_pk, filename="step_metrics.csv",
                         purpose="fine-tune-results", bytes=len(content), storage_key=key))
    return file_id
