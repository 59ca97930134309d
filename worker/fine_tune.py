"""One job's work once claimed: validate its files, wait for a slot or start, train (resuming
from the last checkpoint), then publish the adapter and the results and succeed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app.core.db import session_scope
from app.core.ids import now
from app.models import Checkpoint, FineTuningJob
from app.services import job_state as state
from app.services.base_models import ensure_base_model
from app.services.events import add_event
from app.services.jobs import announce_queue_positions
from worker import legacy_results
from worker.dataprep.checks import MIN_EXAMPLES, too_few_message  # shared with prepare-data
from worker.job_run import JobFailed, JobRun
from worker.results_file import store_results
from worker.tracking import tracked


def _validate(run: JobRun) -> tuple[Any, dict, Path, Path | None]:
    from worker.training import resolve_hyperparameters
    from worker.training.config import training_options

    job, first = run.job, run.job.status == "validating_files"
    if first:
        run.event(f"Validating training file: {job.training_file}")
    training_path, n_examples = run.data_path(job.training_file, "training_file")
    if n_examples < MIN_EXAMPLES:
        raise JobFailed("invalid_training_file", too_few_message(n_examples), "training_file")
    validation_path = None
    if job.validation_file:
        if first:
            run.event(f"Validating validation file: {job.validation_file}")
        validation_path, _ = run.data_path(job.validation_file, "validation_file")
    try:
        hyper = resolve_hyperparameters(job.hyperparameters, n_examples)
        options = training_options(job.hyperparameters, job.method_type)
    except ValueError as exc:
        raise JobFailed("invalid_hyperparameters", str(exc), "hyperparameters") from None
    return hyper, options, training_path, validation_path


def fine_tune(run: JobRun) -> None:
    from worker.training import TrainingConfig, train

    job, settings = run.job, run.settings
    hyper, options, training_path, validation_path = _validate(run)
    if job.status == "validating_files":
        resolved = {**job.hyperparameters, "n_epochs": hyper.n_epochs, "batch_size": hyper.batch_size,
                    "learning_rate_multiplier": hyper.learning_rate_multiplier}
        if not run.move("queued", ["validating_files"], "Files validated, moving job to queued state",
                        resolved_hyperparameters=resolved):
            return
    with session_scope(run.url) as session:
        started = state.start_running(session, job, run.owner, settings.max_running_jobs_per_project,
                                      started_at=job.started_at or now())
        if not started:
            status = session.scalar(select(FineTuningJob.status).where(FineTuningJob.pk == job.pk))
            if status == "queued":
                state.hold(session, job.pk, run.owner)
                position = state.queue_position(session, job.pk)
                add_event(session, job.pk, f"Waiting for a slot: the project already runs "
                          f"{settings.max_running_jobs_per_project} job(s); queue position {position}",
                          data={"queue_position": position})
                session.execute(update(FineTuningJob).where(FineTuningJob.pk == job.pk)
                                .values(enqueued_at=time.time()))
                run.waiting_for_slot = True
            return
        announce_queue_positions(session, job.pk)  # the jobs behind this one moved up
        resume = run.last_checkpoint()
        if resume:
            add_event(session, job.pk, f"Fine-tuning job resumed from the checkpoint at step {resume[0]}",
                      data={"step": resume[0]})
        else:
            add_event(session, job.pk, "Fine-tuning job started")
    base_dir = ensure_base_model(settings, job.model)
    if resume:
        options["resume_from"] = resume[1]
    if settings.checkpoint_every and "checkpoint_every" not in options:
        options["checkpoint_every"] = settings.checkpoint_every
    config = TrainingConfig(
        base_model_dir=base_dir, training_file=training_path, validation_file=validation_path,
        output_dir=run.workdir / "adapter", checkpoint_dir=run.workdir / "checkpoints",
        hyperparameters=hyper, seed=job.seed, **options,
    )
    run.quantization = config.lora.quantization  # its adapters are served on a base loaded the same way
    with tracked(settings, job, run, resolved=vars(hyper)) as callbacks:  # wandb / MLflow, when asked
        result = train(config, callbacks)
    if result.stopped:
        status = run.status(max_age=0)
        if result.paused and status == "paused":  # checkpointed for the user (a hand-back is `queued`, told already)
            run.event(f"Fine-tuning job paused at step {result.steps}; resume continues from the last checkpoint",
                      data={"step": result.steps}, estimated_finish=None)
        elif not result.paused and status in state.TERMINAL:  # cancelled or failed elsewhere: no checkpoint
            run.event("Training stopped: the job is no longer running")
        return
    report_best_checkpoint(run, result.metrics, early_stopped=result.early_stopped)
    classification = None
    if (job.legacy or {}).get("compute_classification_metrics") and validation_path is not None:
        run.event("Computing classification metrics on the validation file")
        classification = legacy_results.classification_metrics(base_dir, result.adapter_dir, validation_path,
                                                                job.legacy, config.max_seq_len)
    result_file = store_results(run, result.metrics, classification)
    adapter_ref = run.jobs.publish_dir(f"{job.id}/adapter", result.adapter_dir)
    run.succeed(adapter_ref, result.trained_tokens, result_file)


def report_best_checkpoint(run: JobRun, metrics: list[dict], early_stopped: bool = False) -> None:
    """At the end of training: the saved checkpoint with the lowest validation loss (issue 9).
    Without checkpoints that carry a validation loss, the best logged step is named instead. After
    early stopping, the fine-tuned model itself has the best validated weights: said too."""
    from worker.evaluation import best_by_validation_loss

    with session_scope(run.url) as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_pk == run.job.pk))
        saved = {c.step_number: c.model_id for c in rows}
    best = best_by_validation_loss([m for m in metrics if m.get("step") in saved]) or best_by_validation_loss(metrics)
    if best is None:
        return
    model = saved.get(best["step"])
    where = f": {model}" if model else " (no checkpoint was saved at that step)"
    overall = best_by_validation_loss(metrics) if early_stopped else None
    if overall is not None:
        where += (f"; the fine-tuned model itself has the weights of step {overall['step']}, restored by early "
                  "stopping")
    if run.job.method_type == "dpo":  # a preference loss: its exp is no perplexity
        best.pop("valid_perplexity", None)
    perplexity = f", perplexity {best['valid_perplexity']:.4g}" if "valid_perplexity" in best else ""
    run.event(f"Best checkpoint by validation loss: step {best['step']} (validation loss {best['valid_loss']:.4f}"
              f"{perplexity}){where}",
              data={**best, "fine_tuned_model_checkpoint": model, "early_stopped": early_stopped})
