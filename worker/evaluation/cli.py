"""`whetstone evaluate` (run one here and print the table) and `whetstone evaluation ID` (print a stored one)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("evaluate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The fine-tuned LoRA adapter (a job's adapter or checkpoint directory).")
@click.option("--base", "base", default="smollm2-135m-instruct", show_default=True,
              help="Base model: a directory, or a base model name of this server.")
@click.option("--max-tokens", type=click.IntRange(1, 2048), default=None,
              help="Tokens to generate per example (default: the longest reference + 8).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report and every example's outputs here.")
def evaluate_command(file: Path, adapter: Path, base: str, max_tokens: int | None, json_out: Path | None) -> None:
    """Compare a fine-tuned adapter with its base model on a held-out JSONL FILE and print the table."""
    from worker.evaluation import build_report, evaluate, report_table

    base_dir = Path(base)
    if not base_dir.is_dir():
        from app.core.config import get_settings
        from app.services.base_models import ensure_base_model

        try:
            base_dir = ensure_base_model(get_settings(), base)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
    result = evaluate(base_dir, adapter, file, max_new_tokens=max_tokens)
    report = build_report(result)
    click.echo(report_table(report))
    if json_out is not None:
        json_out.write_text(json.dumps({"report": report, "samples": result["samples"]}, indent=2, ensure_ascii=False))


@click.command("evaluation")
@click.argument("evaluation_id")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def show_evaluation(evaluation_id: str, data_dir: Path | None) -> None:
    """Print a stored evaluation (from the API's database) as a table."""
    from sqlalchemy import select

    from app.cli import _apply_overrides
    from app.core.db import session_scope
    from app.models import Evaluation
    from worker.evaluation import report_table

    settings = _apply_overrides(data_dir=data_dir)
    with session_scope(settings.resolved_database_url) as session:
        row = session.scalar(select(Evaluation).where(Evaluation.id == evaluation_id))
        if row is None:
            raise click.ClickException(f"no evaluation {evaluation_id!r}")
        status, report, error, model = row.status, row.report, row.error, row.model
    click.echo(f"{evaluation_id}: {model} vs its base, {status}")
    if error:
        raise click.ClickException(error["message"])
    if report:
        click.echo(report_table(report))
