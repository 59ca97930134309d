"""Experiment trackers a job reports to, besides its own events: Weights & Biases and MLflow.

* wandb: the job's ``integrations: [{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}]``
  (OpenAI's shape). The run's files go to ``<jobs_dir>/<job id>/wandb``; ``WHETSTONE_WANDB_MODE``
  (default ``offline``: no network, sync later with ``wandb sync``) or ``online`` with a
  ``WANDB_API_KEY``. The run id is the job id, so a resumed job continues the same run.
* MLflow: every job, when ``WHETSTONE_MLFLOW_TRACKING_URI`` is set (``file:///…``, ``sqlite:///…``,
  ``http://…``): a run named after the job in the experiment ``WHETSTONE_MLFLOW_EXPERIMENT``, with
  the job's method, model and hyper-parameters as parameters.

Both log every metrics event's numbers at its step. Both are optional extras (``whetstone[tracking]``)
and never required to train: a tracker that cannot be imported or fails is reported in a warning
event and the job trains on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from app.core.errors import public_reason

log = logging.getLogger("whetstone.worker")


class TrackedCallbacks:
    """The job's callbacks, with each metrics event also logged to the trackers."""

    def __init__(self, inner: Any, trackers: list[Any]) -> None:
        self.inner, self.trackers = inner, trackers

    def __getattr__(self, name: str) -> Any:  # should_stop, should_pause, on_checkpoint, ...
        return getattr(self.inner, name)

    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None:
        self.inner.on_event(message, type=type, level=level, data=data)
        if type != "metrics" or not data or "step" not in data:
            return
        numbers = {k: float(v) for k, v in data.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for tracker in list(self.trackers):
            try:
                tracker.log(numbers, int(data["step"]))
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the job
                self.trackers.remove(tracker)
                self.inner.on_event(f"{tracker.name} logging failed and is off for this run: {public_reason(exc)}"[:500], level="warn")


class WandbTracker:
    name = "wandb"

    def __init__(self, settings: Any, job: Any, spec: dict, params: dict) -> None:
        import wandb

        directory = settings.jobs_dir / job.id / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        tags = [*(spec.get("tags") or []), "whetstone/finetune", f"whetstone/{job.model}", f"whetstone/{job.id}"]
        self.run = wandb.init(project=spec["project"], name=spec.get("name") or job.id, entity=spec.get("entity"),
                              tags=tags, id=job.id, resume="allow", dir=str(directory), mode=settings.wandb_mode,
                              config=params, settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class MlflowTracker:
    name = "mlflow"

    def __init__(self, settings: Any, job: Any, params: dict) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        name = settings.mlflow_experiment
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.whetstone_job_id = '{job.id}'",
                                        max_results=1)
        if found:  # a resumed job continues its run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=job.id, tags={"whetstone_job_id": job.id})
            self.run_id = run.info.run_id
            for key, value in params.items():
                self.client.log_param(self.run_id, key, value)

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def job_params(job: Any, resolved: dict | None = None) -> dict:
    """The job's model, method, files, seed and hyper-parameters (``resolved``: "auto" values resolved)."""
    hyper = {**job.hyperparameters, **(resolved or {})}
    return {"model": job.model, "method": job.method_type, "training_file": job.training_file,
            "validation_file": job.validation_file, "seed": job.seed, **hyper}


@contextlib.contextmanager
def tracked(settings: Any, job: Any, callbacks: Any, resolved: dict | None = None) -> Iterator[Any]:
    """``callbacks`` wrapped to report to the job's trackers; each tracker's run is closed on exit
    (FINISHED, or KILLED when training raised)."""
    trackers: list[Any] = []
    params = job_params(job, resolved)
    wanted = [("wandb", lambda spec=spec: WandbTracker(settings, job, spec, params))
              for spec in (i["wandb"] for i in (job.integrations or []) if i.get("type") == "wandb")]
    if settings.mlflow_tracking_uri:
        wanted.append(("mlflow", lambda: MlflowTracker(settings, job, params)))
    for name, start in wanted:
        try:
            trackers.append(start())
        except Exception as exc:  # noqa: BLE001 - not installed, unreachable: train without it
            log.warning("job %s: %s tracking is off: %s", job.id, name, exc)
            callbacks.on_event(f"{name} tracking is off for this run: {public_reason(exc)}"[:500], level="warn")
    status = "FINISHED"
    try:
        yield TrackedCallbacks(callbacks, trackers) if trackers else callbacks
    except BaseException:
        status = "KILLED"
        raise
    finally:
        for tracker in trackers:
            try:
                tracker.finish(status)
            except Exception:  # noqa: BLE001
                log.exception("job %s: closing the %s run failed", job.id, tracker.name)
