"""Read CSV, TSV, JSON, JSONL and XLSX into training examples (dicts in the upload format).

Each example keeps where it came from (`line 3`, `row 2`, `item 5`) so reports point at the
user's own file. A JSONL line that is not valid JSON is kept as a record with the same reason
the API gives for it, so the checks can report it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.training.validation import InvalidExample, validate_lines

FORMATS = ("csv", "tsv", "json", "jsonl", "xlsx")
PROMPT_COLUMNS = ("prompt", "input", "question", "instruction", "query", "user")
COMPLETION_COLUMNS = ("completion", "output", "answer", "response", "target", "assistant")
SYSTEM_COLUMNS = ("system", "system_prompt")


@dataclass
class Record:
    where: str  # "line 3" (JSONL, as the API counts), "row 2" (CSV/TSV/XLSX data rows), "item 5" (JSON)
    example: Any  # the example (a dict when it parsed), or None with `error` set
    error: str | None = None


class ReadError(ValueError):
    """The file as a whole cannot be read (unknown format, no recognisable columns)."""


@dataclass
class Columns:
    prompt: str | None = None
    completion: str | None = None
    system: str | None = None


def detect_format(path: Path, given: str | None = None) -> str:
    fmt = (given or path.suffix.lstrip(".")).lower()
    if fmt == "xls":
        raise ReadError("old .xls workbooks are not supported; save the sheet as .xlsx or .csv")
    if fmt not in FORMATS:
        raise ReadError(f"cannot tell the format of {path.name}; use --format with one of {', '.join(FORMATS)}")
    return fmt


def read_records(path: Path, fmt: str | None = None, columns: Columns | None = None,
                 sheet: str | None = None) -> list[Record]:
    """Every example of the file, in order, in the upload format (chat or prompt/completion)."""
    fmt = detect_format(path, fmt)
    columns = columns or Columns()
    if fmt == "jsonl":
        return _read_jsonl(path.read_bytes(), columns)
    if fmt == "json":
        return _read_json(path.read_text(encoding="utf-8-sig"), columns)
    if fmt == "xlsx":
        header, rows = _xlsx_rows(path, sheet)
    else:
        text = path.read_text(encoding="utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
        all_rows = [row for row in reader if any(cell.strip() for cell in row)]
        if not all_rows:
            return []
        header, rows = all_rows[0], all_rows[1:]
    header = [h.strip() for h in header]
    mapped = _map_columns(header, columns)
    records = []
    for number, row in enumerate(rows, start=1):
        values = dict(zip(header, [*row, *[""] * (len(header) - len(row))]))
        records.append(Record(f"row {number}", _row_example(values, mapped)))
    return records


def _read_jsonl(data: bytes, columns: Columns) -> list[Record]:
    records = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # bad UTF-8 or JSON; an int of over 4300 digits; nesting too deep
            try:  # the API's own words for a line it cannot parse
                validate_lines([raw])
            except InvalidExample as exc:
                records.append(Record(f"line {number}", None, exc.reason))
                continue
        records.append(Record(f"line {number}", _object_example(obj, columns)))
    return records


def _read_json(text: str, columns: Columns) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReadError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if "messages" in data or "prompt" in data or len(lists) != 1:
            data = [data]
        else:
            data = lists[0]  # {"data": [...]} and similar wrappers
    if not isinstance(data, list):
        raise ReadError("a JSON file must hold a list of examples")
    return [Record(f"item {i}", _object_example(obj, columns)) for i, obj in enumerate(data, start=1)]


def _object_example(obj: Any, columns: Columns) -> Any:
    """Objects already in the upload format pass through untouched; others are mapped by column."""
    if not isinstance(obj, dict) or "messages" in obj or "prompt" in obj or "completion" in obj:
        return obj
    if "preferred_output" in obj or "non_preferred_output" in obj:  # the preference (DPO) format
        return obj
    header = list(obj)
    try:
        mapped = _map_columns(header, columns)
    except ReadError:
        return obj  # the checks will say what is wrong with it
    return _row_example(obj, mapped)


def _find(header: list[str], given: str | None, aliases: tuple[str, ...], what: str) -> str | None:
    if given:
        if given not in header:
            raise ReadError(f"no column {given!r} for the {what}; columns are: {', '.join(header)}")
        return given
    lower = {h.lower(): h for h in header}
    return next((lower[a] for a in aliases if a in lower), None)


def _map_columns(header: list[str], columns: Columns) -> Columns:
    if "messages" in header:
        return Columns()
    prompt = _find(header, columns.prompt, PROMPT_COLUMNS, "prompt")
    completion = _find(header, columns.completion, COMPLETION_COLUMNS, "completion")
    system = _find(header, columns.system, SYSTEM_COLUMNS, "system prompt")
    if prompt is None or completion is None:
        if len(header) == 2 and prompt is None and completion is None:
            prompt, completion = header  # two unnamed columns: prompt, then completion
        else:
            raise ReadError(f"cannot find the prompt and completion columns among: {', '.join(header)}; "
                            "name them with --prompt-column and --completion-column")
    return Columns(prompt, completion, system)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _row_example(values: dict, columns: Columns) -> Any:
    if columns.prompt is None:  # a "messages" column holding JSON
        raw = values.get("messages")
        try:
            messages = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            return {"messages": f"<invalid JSON: {exc.msg}>"}
        return {"messages": messages}
    example = {"prompt": _cell(values.get(columns.prompt)), "completion": _cell(values.get(columns.completion))}
    if columns.system and _cell(values.get(columns.system)).strip():
        example["system"] = _cell(values.get(columns.system))  # used when converting to chat
    return example


def _xlsx_rows(path: Path, sheet: str | None) -> tuple[list[str], list[list[str]]]:
    from openpyxl import load_workbook

    workbook = load_workbook(path, read_only=True, data_only=True)
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise ReadError(f"no sheet {sheet!r}; sheets are: {', '.join(workbook.sheetnames)}")
        rows = [[_cell(c) for c in row] for row in workbook[sheet or workbook.sheetnames[0]].iter_rows(values_only=True)]
    finally:
        workbook.close()
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return [], []
    width = max(i + 1 for i, h in enumerate(rows[0]) if h.strip())
    return rows[0][:width], [r[:width] for r in rows[1:]]


def to_upload_format(example: Any, target: str, system: str | None = None) -> Any:
    """Convert a prompt/completion example to `target` ("chat" or "completion")."""
    if not isinstance(example, dict) or "messages" in example:
        return example
    if target == "chat" and isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
        system_text = example.get("system") or system
        messages = [{"role": "system", "content": system_text}] if system_text else []
        return {"messages": [*messages, {"role": "user", "content": example["prompt"]},
                             {"role": "assistant", "content": example["completion"]}]}
    return {k: v for k, v in example.items() if k != "system"}
