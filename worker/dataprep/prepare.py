"""Prepare a training file: read, convert, check, fix, split, write JSONL the API accepts."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.training.validation import InvalidExample, validate_lines

from .checks import Finding, run_checks
from .readers import Columns, Record, read_records, to_upload_format


def jsonl_bytes(examples: list[Any]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode("utf-8")


def load(path: Path, *, fmt: str | None = None, columns: Columns | None = None, sheet: str | None = None,
         to: str = "auto", system: str | None = None) -> list[Record]:
    """Read the file and bring every example to the upload format (`to`: auto, chat or completion)."""
    records = read_records(path, fmt, columns, sheet)
    if to == "auto":  # keep each example's format (a mixed file is reported, as the API would)
        to = "completion"
    return [Record(r.where, to_upload_format(r.example, to, system), r.error) for r in records]


def fix_and_check(records: list[Record], decide: Callable[[Finding], bool], tokenizer: Any = None,
                  max_tokens: int = 1024) -> tuple[list[Record], list[Finding], list[Finding]]:
    """Offer each fix (in order, re-checking after each one applied); return records, remaining, applied."""
    applied: list[Finding] = []
    declined: set[str] = set()
    while True:
        findings = run_checks(records, tokenizer, max_tokens)
        offer = next((f for f in findings if f.apply is not None and f.message not in declined), None)
        if offer is None:
            return records, findings, applied
        if decide(offer):
            records = offer.apply(records)
            applied.append(offer)
        else:
            declined.add(offer.message)


def split(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded random split; the validation part keeps at least one example, training too."""
    if not 0 < fraction < 1:
        raise ValueError("--validation-split must be between 0 and 1")
    n_valid = max(1, round(len(examples) * fraction))
    if n_valid >= len(examples):
        raise ValueError(f"cannot split {len(examples)} example(s) into training and validation")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    valid = set(order[:n_valid])
    return [e for i, e in enumerate(examples) if i not in valid], [e for i, e in enumerate(examples) if i in valid]


def output_paths(source: Path, output: Path | None, with_validation: bool) -> list[Path]:
    base = output or source.with_name(f"{source.stem}_prepared.jsonl")
    if not with_validation:
        return [base]
    stem = base.name.removesuffix(".jsonl")
    return [base.with_name(f"{stem}_train.jsonl"), base.with_name(f"{stem}_valid.jsonl")]


def write(records: list[Record], paths: list[Path], fraction: float | None, seed: int) -> list[tuple[Path, int]]:
    """Write the examples (split when `fraction`); each file is checked with the API's own upload rule."""
    examples = [r.example for r in records]
    parts = list(split(examples, fraction, seed)) if fraction else [examples]
    outputs = []
    for path, part in zip(paths, parts):
        content = jsonl_bytes(part)
        try:
            validate_lines(content.split(b"\n"))
        except InvalidExample as exc:  # run_checks found no error, so this would be a bug: refuse to write
            raise RuntimeError(f"{path.name} would be rejected by the API: {exc}") from None
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(content)
        tmp.replace(path)
        outputs.append((path, len(part)))
    return outputs
