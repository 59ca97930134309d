"""The `whetstone` command: serve, worker, migrate, keys, import-base."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from app.core.config import Settings, get_settings


def _apply_overrides(**overrides: object) -> Settings:
    """CLI flags win over the environment; they are exported so child processes agree."""
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"WHETSTONE_{name.upper()}"] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    return settings


def migrate_database(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url)
    command.upgrade(config, "head")


@click.group()
def main() -> None:
    """Whetstone: self-hosted fine-tuning with an OpenAI-compatible API."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Overrides WHETSTONE_DATA_DIR.")
def migrate(data_dir: Path | None) -> None:
    """Bring the database schema up to date."""
    migrate_database(_apply_overrides(data_dir=data_dir))
    click.echo("database is up to date")


@main.command("import-base")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def import_base(data_dir: Path | None) -> None:
    """Import the built-in base model (SmolLM2-135M-Instruct, shipped as GGUF) as safetensors."""
    from app.services.base_models import SMOLLM2, ensure_base_model

    click.echo(ensure_base_model(_apply_overrides(data_dir=data_dir), SMOLLM2))


def _stop(child: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the embedded worker with Celery's cold shutdown (it ends its pool processes too).
    A job it was running stays `running`; nothing resumes it yet."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGQUIT)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.kill()


@main.command()
@click.option("--host", default=None, help="Overrides WHETSTONE_HOST (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Overrides WHETSTONE_PORT (default 8000).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Overrides WHETSTONE_DATA_DIR.")
@click.option("--worker/--no-worker", "with_worker", default=None,
              help="Start a worker beside the API (default: only with the embedded broker).")
def serve(host: str | None, port: int | None, data_dir: Path | None, with_worker: bool | None) -> None:
    """Migrate, then run the API (and, embedded, one worker process)."""
    import uvicorn

    from app.main import create_app
    from app.services.base_models import SMOLLM2, ensure_base_model

    settings = _apply_overrides(host=host, port=port, data_dir=data_dir)
    migrate_database(settings)
    try:
        ensure_base_model(settings, SMOLLM2)
    except Exception as exc:  # the server still runs; jobs on this model will fail with the reason
        click.echo(f"warning: built-in base model unavailable: {exc}", err=True)
    if settings.broker_is_embedded if with_worker is None else with_worker:
        child = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"])
        atexit.register(_stop, child)
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would skip atexit.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: sys.exit(0))
    click.echo(f"Whetstone API on http://{settings.host}:{settings.port}/v1 (data in {settings.resolved_data_dir})")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--loglevel", default="INFO")
def worker(data_dir: Path | None, loglevel: str) -> None:
    """Run a training worker (one job at a time) against the configured database and broker."""
    settings = _apply_overrides(data_dir=data_dir)
    from worker.celery_app import app as celery_app

    celery_app.worker_main(["worker", f"--loglevel={loglevel}", "-Q", settings.queue, "--concurrency=1",
                            "--pool=prefork", "--without-gossip", "--without-mingle", "-n", f"whetstone@%h-{os.getpid()}"])


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--project", required=True, help="Project name (created if it does not exist).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def keys_create(project: str, data_dir: Path | None) -> None:
    """Create an API key for PROJECT and print it (it is shown only once)."""
    import re

    from app.core.auth import create_key
    from app.core.db import session_scope

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project):
        raise click.BadParameter("use letters, digits, '-' and '_' (at most 64)", param_hint="--project")
    settings = _apply_overrides(data_dir=data_dir)
    migrate_database(settings)
    with session_scope(settings.resolved_database_url) as session:
        secret = create_key(session, project)
    click.echo(secret)


# --- data preparation and evaluation (issue 9) ---
from worker.dataprep.cli import prepare_data  # noqa: E402
from worker.evaluation.cli import evaluate_command, show_evaluation  # noqa: E402

for _command in (prepare_data, evaluate_command, show_evaluation):
    main.add_command(_command)


if __name__ == "__main__":
    main()
