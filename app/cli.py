"""The `whetstone` command: serve, worker, migrate, keys, import-base."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
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
    from app.core.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


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


def _stop(child: subprocess.Popen, grace: float) -> None:
    """Stop the embedded worker warmly: SIGTERM is Celery's warm shutdown, and the job it runs saves
    a checkpoint before its next optimizer step and goes back to the queue (worker/lifecycle.py), so
    the next start resumes it. Past `grace` seconds, a cold shutdown (SIGQUIT), then SIGKILL: the
    job's lease then expires and the next worker's reaper re-queues it from its last checkpoint."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGQUIT, 10.0)):
        if child.poll() is not None:
            return
        child.send_signal(signum)
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    child.kill()
    child.wait()


@main.command()
@click.option("--host", default=None, help="Overrides WHETSTONE_HOST (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Overrides WHETSTONE_PORT (default 8000).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Overrides WHETSTONE_DATA_DIR.")
@click.option("--worker/--no-worker", "with_worker", default=None,
              help="Start a worker beside the API (default: only with the embedded broker).")
def serve(host: str | None, port: int | None, data_dir: Path | None, with_worker: bool | None) -> None:
    """Migrate, then run the API (and, embedded, one worker process)."""
    from app.core.shutdown import run_server
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
        atexit.register(_stop, child, settings.worker_shutdown_grace)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would skip atexit and
    # end the process "killed by SIGTERM"; a graceful stop exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    click.echo(f"Whetstone API on http://{settings.host}:{settings.port}/v1 (data in {settings.resolved_data_dir})")
    run_server(create_app(settings), settings.host, settings.port, settings.shutdown_grace)


@main.command()
@click.option("--host", default=None, help="Overrides WHETSTONE_HOST.")
@click.option("--port", type=int, default=None, help="Overrides WHETSTONE_PORT.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Overrides WHETSTONE_DATA_DIR.")
def inference(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Serve completions, chat and models (one base model in memory per name, many adapters on it).
    Point the API at it with WHETSTONE_INFERENCE_URL."""
    from app.core.shutdown import run_server
    from app.main import create_inference_app

    settings = _apply_overrides(host=host, port=port, data_dir=data_dir)
    click.echo(f"Whetstone inference on http://{settings.host}:{settings.port}/v1")
    run_server(create_inference_app(settings), settings.host, settings.port, settings.shutdown_grace)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--loglevel", default=None, help="Overrides WHETSTONE_LOG_LEVEL.")
def worker(data_dir: Path | None, loglevel: str) -> None:
    """Run a training worker (one job at a time) against the configured database and broker."""
    settings = _apply_overrides(data_dir=data_dir)
    from app.core.logs import install_celery_logging
    from worker.celery_app import app as celery_app

    install_celery_logging(settings.log_level, settings.log_format)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        from app.core.metrics import worker_registry

        start_http_server(settings.worker_metrics_port, registry=worker_registry())

    celery_app.worker_main(["worker", f"--loglevel={loglevel or settings.log_level}", "-Q", settings.queue,
                            "--concurrency=1", "--pool=prefork", "--without-gossip", "--without-mingle",
                            "-n", f"whetstone@%h-{os.getpid()}"])


@main.group()
def keys() -> None:
    """API keys."""


def _keys_session(data_dir: Path | None):
    from app.core.db import session_scope

    settings = _apply_overrides(data_dir=data_dir)
    migrate_database(settings)
    return session_scope(settings.resolved_database_url)


@keys.command("create")
@click.option("--project", default=None, help="Project name (created if it does not exist).")
@click.option("--admin", "admin", is_flag=True, help="An admin key (projects, keys, base models; no project).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def keys_create(project: str | None, admin: bool, data_dir: Path | None) -> None:
    """Create an API key for PROJECT (or an admin key) and print it (it is shown only once)."""
    import re

    from app.core.auth import create_admin_key, create_key

    if admin == (project is not None):
        raise click.UsageError("give either --project NAME or --admin")
    if project is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project):
        raise click.BadParameter("use letters, digits, '-' and '_' (at most 64)", param_hint="--project")
    with _keys_session(data_dir) as session:
        secret = create_admin_key(session) if admin else create_key(session, project)
    click.echo(secret)


@keys.command("list")
@click.option("--project", default=None, help="Only this project's keys.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def keys_list(project: str | None, data_dir: Path | None) -> None:
    """One line per key: id, role, project, prefix, created, and `revoked` or `active` (never the secret)."""
    from app.core.auth import list_keys

    with _keys_session(data_dir) as session:
        for key, proj in list_keys(session, project):
            state = f"revoked@{key.revoked_at}" if key.revoked_at else "active"
            click.echo(f"{key.id}\t{key.role}\t{proj.name if proj else '-'}\t{key.display_prefix}...\t"
                       f"{key.created_at}\t{state}")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def keys_revoke(key_id: str, data_dir: Path | None) -> None:
    """Revoke KEY_ID: it is refused from the next request on."""
    from app.core.auth import revoke_key

    with _keys_session(data_dir) as session:
        try:
            revoke_key(session, key_id)
        except LookupError:
            raise click.ClickException(f"no key with id {key_id}") from None
        session.commit()
    click.echo(f"revoked {key_id}")


@keys.command("rotate")
@click.argument("key_id")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def keys_rotate(key_id: str, data_dir: Path | None) -> None:
    """Print a new key of the same kind and project as KEY_ID (shown once); KEY_ID is revoked."""
    from app.core.auth import rotate_key

    with _keys_session(data_dir) as session:
        try:
            row, secret = rotate_key(session, key_id)
        except LookupError:
            raise click.ClickException(f"no key with id {key_id}") from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
    click.echo(f"{row.id} {secret}")


# --- data preparation and evaluation (issue 9) ---
from worker.dataprep.cli import prepare_data  # noqa: E402
from worker.evaluation.cli import evaluate_command, show_evaluation  # noqa: E402

for _command in (prepare_data, evaluate_command, show_evaluation):
    main.add_command(_command)


# --- webhooks (issue 15) ----------------------------------------------------------------


@contextmanager
def _project_session(project: str, data_dir: Path | None):
    """A session and the pk of PROJECT; service errors become CLI errors."""
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.core.errors import APIError
    from app.models import Project

    settings = _apply_overrides(data_dir=data_dir)
    migrate_database(settings)
    with session_scope(settings.resolved_database_url) as session:
        pk = session.scalar(select(Project.pk).where(Project.name == project))
        if pk is None:
            raise click.BadParameter(f"no project named '{project}'", param_hint="--project")
        try:
            yield session, pk
        except APIError as exc:
            raise click.ClickException(exc.message) from None


def _webhook_command(name: str, help: str):
    def decorate(fn):
        fn = click.option("--data-dir", type=click.Path(path_type=Path), default=None)(fn)
        fn = click.option("--project", required=True)(fn)
        return webhooks.command(name, help=help)(fn)
    return decorate


@main.group()
def webhooks() -> None:
    """Webhook endpoints: fine_tuning.job.succeeded/failed/cancelled, signed (Standard Webhooks)."""


@_webhook_command("create", "Register URL for PROJECT; prints the endpoint id and its signing secret (shown once).")
@click.option("--url", required=True, help="Where events are POSTed.")
def webhooks_create(project: str, url: str, data_dir: Path | None) -> None:
    from app.services import webhooks as service

    with _project_session(project, data_dir) as (session, project_pk):
        row = service.create_endpoint(session, project_pk, url)
        click.echo(f"{row.id} {row.secret}")


@_webhook_command("list", "One line per endpoint: id, url.")
def webhooks_list(project: str, data_dir: Path | None) -> None:
    from app.services import webhooks as service

    with _project_session(project, data_dir) as (session, project_pk):
        for row in service.list_endpoints(session, project_pk):
            click.echo(f"{row.id} {row.url}")


@_webhook_command("delete", "Remove ENDPOINT_ID (and its delivery record).")
@click.argument("endpoint_id")
def webhooks_delete(project: str, endpoint_id: str, data_dir: Path | None) -> None:
    from app.services import webhooks as service

    with _project_session(project, data_dir) as (session, project_pk):
        service.delete_endpoint(session, project_pk, endpoint_id)
    click.echo(f"deleted {endpoint_id}")


@_webhook_command("deliveries", "Every delivery to ENDPOINT_ID with every attempt, as JSON lines.")
@click.argument("endpoint_id")
def webhooks_deliveries(project: str, endpoint_id: str, data_dir: Path | None) -> None:
    from app.services import webhooks as service

    with _project_session(project, data_dir) as (session, project_pk):
        endpoint = service.get_endpoint(session, project_pk, endpoint_id)
        for delivery in service.list_deliveries(session, endpoint):
            click.echo(delivery.model_dump_json())

if __name__ == "__main__":
    main()
