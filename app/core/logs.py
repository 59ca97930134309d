"""Logging: one JSON object per line (or plain text on a laptop), carrying the request id of the
HTTP request and the job id of the training job being handled, wherever the line comes from."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from contextlib import contextmanager
from collections.abc import Iterator

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():  # ids and anything passed with extra={...}
            if key not in _RESERVED and value is not None and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s]: %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Replace the root logger's handlers with one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


def install_celery_logging(level: str, fmt: str) -> None:
    """Celery keeps our logging setup, and every line written while a worker runs a training job
    carries that job's id (the task's argument)."""
    from celery.signals import setup_logging, task_postrun, task_prerun

    tokens: dict[str, contextvars.Token] = {}

    @setup_logging.connect(weak=False)
    def _setup(**_):  # noqa: ANN001  (a receiver here stops Celery from configuring logging itself)
        configure_logging(level, fmt)

    from worker.celery_app import TRAIN_TASK

    @task_prerun.connect(weak=False)
    def _set(task_id=None, task=None, args=None, **_):  # noqa: ANN001
        if args and getattr(task, "name", None) == TRAIN_TASK:  # other tasks (evaluations) carry other ids
            tokens[task_id] = job_id_var.set(str(args[0]))

    @task_postrun.connect(weak=False)
    def _reset(task_id=None, **_):  # noqa: ANN001
        token = tokens.pop(task_id, None)
        if token is not None:
            job_id_var.reset(token)
