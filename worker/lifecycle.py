"""The Celery worker's own lifecycle (the parent process, not the pool child running a job).

- Init: import the training stack and the database driver, so every forked pool process starts
  with them loaded.
- Ready: start the reaper (worker/reaper.py) in a process of its own; it exits with the worker.
- Warm shutdown (SIGTERM, as `docker stop` and Kubernetes send it): stop the reaper, and pass
  SIGTERM to the pool child running a job; the job saves a checkpoint before its next optimizer
  step and goes back to the queue (worker/run_job.py), and the warm shutdown waits for that. The
  reaper of another worker (or of the next one to start) sends it again, and that worker continues
  the job from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from billiard.process import active_children
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

log = logging.getLogger("whetstone.worker")
_reaper: list[subprocess.Popen] = []


@worker_init.connect
def preload_training(**_: object) -> None:
    """Import torch and transformers once, in the parent: each job runs in a freshly forked pool
    process (max_tasks_per_child=1), which then starts with them loaded instead of spending seconds
    importing them before the job's first event (bench/dispatch.py). Importing these two starts no
    thread and touches no GPU, so forking after it is safe. Not peft where torch has CUDA: peft
    imports bitsandbytes, which initialises CUDA on a GPU host, and a forked child could then never
    use CUDA. A CPU-only torch build has no CUDA to initialise, so there the parent imports the
    training loop too (peft, bitsandbytes: about 2 s that each job would spend otherwise)
    (tests/worker/test_preload.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401 - resolves the lazy modules

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        import worker.training.loop  # noqa: F401


@worker_init.connect
def preload_database_driver(**_: object) -> None:
    """Import the configured database's SQLAlchemy dialect and driver (psycopg for Postgres) and
    configure the ORM mappers in the parent: a job process otherwise spends about 230 ms importing
    the driver in its first ``create_engine`` and tens of ms configuring the mappers in its first
    query, before the job's first event (bench/dispatch.py). No engine is made and no connection
    opened here, so none is shared across the fork."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.orm import configure_mappers

    import app.models  # noqa: F401 - the mappers to configure
    from app.core.config import get_settings

    make_url(get_settings().resolved_database_url).get_dialect().import_dbapi()
    configure_mappers()


@worker_ready.connect
def start_reaper(**_: object) -> None:
    _reaper.append(subprocess.Popen([sys.executable, "-m", "worker.reaper", "--parent", str(os.getpid())]))


@worker_process_init.connect
def ignore_sigterm_in_pool_process(**_: object) -> None:
    """A pool process finishes what it runs (an evaluation, say) on warm shutdown; a training job
    installs its own SIGTERM handler (worker/run_job.py) that checkpoints and hands the job back."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@worker_shutting_down.connect
def hand_back_running_jobs(sig: str = "", how: str = "", **_: object) -> None:
    stop_reaper()  # from now on: it would send a handed-back job to this very worker
    if how != "Warm":
        return
    for child in active_children():
        log.info("warm shutdown: asking pool process %s to checkpoint its job and hand it back", child.pid)
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@worker_shutdown.connect
def stop_reaper(**_: object) -> None:
    while _reaper:
        proc = _reaper.pop()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
