"""`whetstone prepare-data FILE`: the preparation tool (registered on the `whetstone` group in app/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .checks import Finding
from .prepare import fix_and_check, load, output_paths, write
from .readers import FORMATS, Columns, ReadError


def _tokenizer(model: str) -> tuple[Any, str]:
    """The base model's tokenizer (a directory, or a base model name of this server), or None and why."""
    from transformers import AutoTokenizer

    path = Path(model)
    if not path.is_dir():
        from app.core.config import get_settings
        from app.services.base_models import find_base_model

        found = find_base_model(get_settings(), model)
        path = found.path if found else None
    if path is None or not (path / "tokenizer_config.json").is_file():
        return None, f"length check skipped: base model {model!r} is not available here (see `whetstone import-base`)"
    return AutoTokenizer.from_pretrained(path, local_files_only=True), f"lengths counted in tokens of {model}"


def _show(finding: Finding) -> None:
    colour = "red" if finding.severity == "error" else "yellow"
    click.echo(click.style(f"- [{finding.severity}] ", fg=colour) + finding.message)


@click.command("prepare-data")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Input format (default: from the extension).")
@click.option("--to", "target", type=click.Choice(["auto", "chat", "completion"]), default="auto",
              help="Output format of prompt/completion rows: chat messages or legacy prompt/completion "
                   "(auto: as the input; chat examples stay chat).")
@click.option("--prompt-column", default=None, help="Column holding the prompt (default: found by name).")
@click.option("--completion-column", default=None, help="Column holding the completion (default: found by name).")
@click.option("--system", default=None, help="System message for every example when converting to chat.")
@click.option("--sheet", default=None, help="XLSX sheet (default: the first).")
@click.option("--model", default="smollm2-135m-instruct", show_default=True,
              help="Base model (name or directory) whose tokenizer measures example lengths.")
@click.option("--max-tokens", type=click.IntRange(8), default=1024, show_default=True,
              help="Longest example training keeps whole (the training max_seq_len).")
@click.option("--validation-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Fraction of examples to write to a separate validation file, e.g. 0.1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the validation split.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output JSONL (default: FILE_prepared.jsonl; with a split, _train/_valid are added).")
@click.option("-y", "--yes", is_flag=True, help="Apply every offered fix without asking (for scripts).")
def prepare_data(file: Path, fmt: str | None, target: str, prompt_column: str | None, completion_column: str | None,
                 system: str | None, sheet: str | None, model: str, max_tokens: int, validation_split: float | None,
                 seed: int, output: Path | None, yes: bool) -> None:
    """Turn CSV, TSV, JSON, JSONL or XLSX into JSONL ready to upload, checking and fixing it on the way.

    Exits with status 1, writing nothing, when errors the API would reject remain."""
    try:
        records = load(file, fmt=fmt, columns=Columns(prompt_column, completion_column), sheet=sheet, to=target,
                       system=system)
    except (ReadError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{file.name}: {exc}") from None
    click.echo(f"Read {len(records)} example(s) from {file.name}")
    tokenizer, note = _tokenizer(model)
    click.echo(note)

    def decide(finding: Finding) -> bool:
        _show(finding)
        if yes:
            click.echo(f"  fixed: {finding.fix}")
            return True
        try:
            return click.confirm(f"  {finding.fix[0].upper()}{finding.fix[1:]}?", default=True)
        except click.Abort:
            raise click.ClickException("no answer on standard input; run with --yes to apply every fix") from None

    records, remaining, applied = fix_and_check(records, decide, tokenizer, max_tokens)
    for finding in remaining:
        if finding.apply is None:  # the fixable ones were shown when offered
            _show(finding)
    errors = [f for f in remaining if f.severity == "error"]
    if errors:
        raise click.ClickException(f"{len(errors)} error(s) left: the API would reject this file; nothing written")
    if not remaining and not applied:
        click.echo("No issues found.")
    paths = output_paths(file, output, validation_split is not None)
    try:
        outputs = write(records, paths, validation_split, seed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for path, n in outputs:
        click.echo(f"Wrote {n} example(s) to {path}")
    click.echo(f"Upload with: curl $BASE/v1/files -H \"Authorization: Bearer $KEY\" -F purpose=fine-tune "
               f"-F file=@{outputs[0][0].name}")
