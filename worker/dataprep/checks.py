"""The data checks, shared by `whetstone prepare-data` and the API.

`error` findings are the rules the API enforces at upload (`worker.training.validation`, with the
same reasons) and at job start (`MIN_EXAMPLES`, with the worker's message): a file with an error
is rejected. `warning` findings are advice in the spirit of OpenAI's legacy preparation tool:
duplicates, empty fields, examples longer than the base model's context for training, and
inconsistent prompt separators or completion endings in the legacy format. Most findings offer a
fix: a function from the examples to fixed examples.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.training.validation import example_format

from .readers import Record

MIN_EXAMPLES = 10  # a fine-tuning job needs at least this many training examples
RECOMMENDED_EXAMPLES = 50
DEFAULT_SEPARATOR = "\n\n###\n\n"  # the legacy tool's suggestion
SEPARATORS = ("\n\n###\n\n", "###", "\n\n", "\n", " ->", "->", ":")
ENDINGS = ("\n", " END", "END", "###")


def too_few_message(n: int) -> str:
    """The worker fails a job on a training file this small, with this message."""
    return f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples"


@dataclass
class Finding:
    check: str  # invalid, too_few, duplicates, empty_fields, too_long, separators, completion_start, endings
    severity: str  # "error": the API rejects the file; "warning": it trains, but probably not as you want
    message: str
    where: list[str] = field(default_factory=list)  # affected examples ("line 3", "row 2")
    fix: str | None = None  # what applying the fix does
    apply: Callable[[list[Record]], list[Record]] | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"check": self.check, "severity": self.severity, "message": self.message,
                "where": self.where, "fix": self.fix}


def _drop(bad: set[int]) -> Callable[[list[Record]], list[Record]]:
    return lambda records: [r for i, r in enumerate(records) if i not in bad]


def _fmt(record: Record) -> str | None:
    if record.error is not None:
        return None
    try:
        return example_format(record.example)
    except ValueError:
        return None


def _listing(where: list[str], limit: int = 5) -> str:
    shown = ", ".join(where[:limit])
    return shown + (f" and {len(where) - limit} more" if len(where) > limit else "")


def check_invalid(records: list[Record]) -> list[Finding]:
    """The API's upload rules, with its reasons: one finding per distinct reason."""
    by_reason: dict[str, list[int]] = {}
    first_format = None
    for i, record in enumerate(records):
        reason = record.error
        if reason is None:
            try:
                this = example_format(record.example)
            except ValueError as exc:
                reason = str(exc)
            else:
                first_format = first_format or this
                if this != first_format:
                    reason = f"{this} format, but the file started in {first_format} format"
        if reason is not None:
            by_reason.setdefault(reason, []).append(i)
    findings = []
    for reason, indexes in by_reason.items():
        where = [records[i].where for i in indexes]
        findings.append(Finding("invalid", "error", f"{where[0]}: {reason}" + (
            f" (also {_listing(where[1:])})" if len(where) > 1 else ""), where,
            f"remove {len(where)} invalid example(s)", _drop(set(indexes))))
    if not records:
        findings.append(Finding("invalid", "error", "the file has no examples"))
    return findings


def check_too_few(records: list[Record]) -> list[Finding]:
    n = len(records)
    if 0 < n < MIN_EXAMPLES:
        return [Finding("too_few", "warning", too_few_message(n) + " (a job on this file will fail; it can still "
                        "serve as a validation file)")]
    if MIN_EXAMPLES <= n < RECOMMENDED_EXAMPLES:
        return [Finding("too_few", "warning", f"{n} examples: fine-tuning usually shows clear gains from "
                        f"{RECOMMENDED_EXAMPLES}-100 well-crafted examples")]
    return []


def check_duplicates(records: list[Record]) -> list[Finding]:
    seen: dict[str, int] = {}
    dupes = []
    for i, record in enumerate(records):
        if record.example is None:
            continue
        key = json.dumps(record.example, sort_keys=True, ensure_ascii=False)
        if key in seen:
            dupes.append(i)
        else:
            seen[key] = i
    if not dupes:
        return []
    where = [records[i].where for i in dupes]
    return [Finding("duplicates", "warning", f"{len(dupes)} duplicated example(s): {_listing(where)}", where,
                    f"remove {len(dupes)} duplicate(s), keeping the first of each", _drop(set(dupes)))]


def _empty_fields(example: Any) -> list[str]:
    if not isinstance(example, dict):
        return []
    if isinstance(example.get("messages"), list):
        return [f"messages[{i}].content" for i, m in enumerate(example["messages"])
                if isinstance(m, dict) and isinstance(m.get("content"), str) and not m["content"].strip()]
    if isinstance(example.get("input"), dict) and isinstance(example["input"].get("messages"), list):
        return [f"input.messages[{i}].content" for i, m in enumerate(example["input"]["messages"])
                if isinstance(m, dict) and isinstance(m.get("content"), str) and not m["content"].strip()]
    return [k for k in ("prompt",) if isinstance(example.get(k), str) and not example[k].strip()]


def check_empty_fields(records: list[Record]) -> list[Finding]:
    """Empty prompts or message contents (an empty completion is an `invalid` error already)."""
    bad = [(i, fields) for i, r in enumerate(records) if (fields := _empty_fields(r.example))]
    if not bad:
        return []
    where = [records[i].where for i, _ in bad]
    sample = "; ".join(f"{records[i].where}: {', '.join(f)}" for i, f in bad[:3])
    return [Finding("empty_fields", "warning", f"{len(bad)} example(s) with empty fields ({sample})", where,
                    f"remove {len(bad)} example(s) with empty fields", _drop({i for i, _ in bad}))]


def check_too_long(records: list[Record], tokenizer: Any, max_tokens: int) -> list[Finding]:
    """Examples longer than `max_tokens` tokens of the base model (training truncates them)."""
    from worker.training.data import tokenize_example
    from worker.training.preference import tokenize_pair

    long, longest = [], 0
    for i, record in enumerate(records):
        fmt = _fmt(record)
        if fmt is None:
            continue
        if fmt == "preference":  # the longer of the two sides (conversation + reply)
            chosen, rejected, _, _ = tokenize_pair(tokenizer, record.example, 1 << 30)
            n = max(len(chosen[0]), len(rejected[0]))
        else:
            n = len(tokenize_example(tokenizer, record.example, 1 << 30).input_ids)
        longest = max(longest, n)
        if n > max_tokens:
            long.append(i)
    if not long:
        return []
    where = [records[i].where for i in long]
    return [Finding("too_long", "warning", f"{len(long)} example(s) are longer than {max_tokens} tokens (longest "
                    f"{longest}); training would cut them off: {_listing(where)}", where,
                    f"remove {len(long)} over-long example(s)", _drop(set(long)))]


def _legacy(records: list[Record]) -> list[tuple[int, dict]]:
    return [(i, r.example) for i, r in enumerate(records) if _fmt(r) == "completion"]


def _common_suffix(texts: list[str]) -> str:
    return os.path.commonprefix([t[::-1] for t in texts])[::-1]


def _consistency(records: list[Record], key: str, candidates: tuple[str, ...], check: str, what: str,
                 suggest: str | None) -> list[Finding]:
    """Do the legacy examples' `key` texts all end with the same marker? Offer to make them."""
    rows = [(i, ex) for i, ex in _legacy(records) if ex[key].strip()]  # blank ones: see check_empty_fields
    if len(rows) < 2:
        return []
    texts = [ex[key] for _, ex in rows]
    if (common := _common_suffix(texts)) and not common[-1].isalnum():
        return []
    counts = Counter(next((c for c in candidates if t.endswith(c)), None) for t in texts)
    counts.pop(None, None)
    if counts:
        marker, n = counts.most_common(1)[0]
        missing = [i for i, ex in rows if not ex[key].endswith(marker)]
        if not missing:
            return []
        message = f"inconsistent {what}s: {n} of {len(rows)} {key}s end with {marker!r}, {len(missing)} do not"
    elif suggest is not None:
        marker, missing = suggest, [i for i, _ in rows]
        message = f"the {key}s share no {what}; the model cannot tell where the {key} ends"
    else:
        return []

    def add(records: list[Record], marker: str = marker, missing: set[int] = set(missing)) -> list[Record]:
        return [Record(r.where, {**r.example, key: r.example[key] + marker}) if i in missing else r
                for i, r in enumerate(records)]

    where = [records[i].where for i in missing]
    return [Finding(check, "warning", message, where, f"append {marker!r} to {len(missing)} {key}(s)", add)]


def check_separators(records: list[Record]) -> list[Finding]:
    return _consistency(records, "prompt", SEPARATORS, "separators", "separator", DEFAULT_SEPARATOR)


def check_endings(records: list[Record]) -> list[Finding]:
    # No suggestion when none has an ending: training appends the end-of-sequence token anyway.
    return _consistency(records, "completion", ENDINGS, "endings", "ending", None)


def check_completion_start(records: list[Record]) -> list[Finding]:
    """Legacy completions should all start with a space (or all not): mixed starts teach two habits."""
    rows = _legacy(records)
    spaced = [i for i, ex in rows if ex["completion"][:1].isspace()]
    if not spaced or len(spaced) == len(rows):
        return []
    missing = [i for i, ex in rows if not ex["completion"][:1].isspace()]

    def add(records: list[Record], missing: set[int] = set(missing)) -> list[Record]:
        return [Record(r.where, {**r.example, "completion": " " + r.example["completion"]}) if i in missing else r
                for i, r in enumerate(records)]

    where = [records[i].where for i in missing]
    return [Finding("completion_start", "warning", f"{len(spaced)} of {len(rows)} completions start with whitespace, "
                    f"{len(missing)} do not", where, f"prefix a space to {len(missing)} completion(s)", add)]


def run_checks(records: list[Record], tokenizer: Any = None, max_tokens: int = 1024) -> list[Finding]:
    """All findings, errors first. Without a tokenizer the length check is skipped."""
    findings = check_invalid(records)
    findings += check_too_few(records) + check_duplicates(records) + check_empty_fields(records)
    if tokenizer is not None:
        findings += check_too_long(records, tokenizer, max_tokens)
    findings += check_separators(records) + check_completion_start(records) + check_endings(records)
    return findings
