"""`whetstone prepare-data`: every input format, every check, the fixes, the split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from worker.dataprep.checks import run_checks
from worker.dataprep.prepare import load

# Awkward on purpose: commas, quotes, a line break, a tab-free unicode cell, a number.
ROWS = [(f"Q{i}, \"quoted\"\nsecond line é?\n\n###\n\n", f" answer {i} END") for i in range(60)]
ROWS[7] = ("What is 6 times 7?\n\n###\n\n", " 42 END")


def expected_jsonl(rows=ROWS) -> str:
    return "".join(json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) + "\n" for p, c in rows)


def write_as(path: Path, rows, header=("prompt", "completion")) -> Path:
    fmt = path.suffix.lstrip(".")
    if fmt in ("csv", "tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerow(header)
            writer.writerows(rows)
    elif fmt == "json":
        path.write_text(json.dumps({"data": [dict(zip(header, r)) for r in rows]}, ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "xlsx":
        from openpyxl import Workbook

        book = Workbook()
        book.active.append(list(header))
        for row in rows:
            book.active.append([int(v) if v.isdigit() else v for v in row])
        book.save(path)
    return path


def prepare(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["prepare-data", *args], input=input, catch_exceptions=False)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "xlsx"])
@pytest.mark.parametrize("header", [("prompt", "completion"), ("Question", "Answer")])
def test_every_input_format_gives_the_same_jsonl(tmp_path, fmt, header):
    source = write_as(tmp_path / f"data.{fmt}", ROWS, header)
    result = prepare(str(source), "--model", "none", "--yes")
    assert result.exit_code == 0, result.output
    assert "No issues found." in result.output
    assert (tmp_path / "data_prepared.jsonl").read_text(encoding="utf-8") == expected_jsonl()


def test_convert_to_chat_with_a_system_message(tmp_path):
    source = write_as(tmp_path / "d.csv", [("Hi", "Hello"), ("Bye", "Goodbye")])
    result = prepare(str(source), "--model", "none", "--to", "chat", "--system", "Be kind.", "-o", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert lines[1] == {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Bye"},
                                     {"role": "assistant", "content": "Goodbye"}]}


def test_unknown_columns_are_named_in_the_error(tmp_path):
    source = write_as(tmp_path / "d.csv", [("a", "b", "c")], header=("x", "y", "z"))
    result = prepare(str(source), "--model", "none")
    assert result.exit_code == 1 and "cannot find the prompt and completion columns among: x, y, z" in result.output
    result = prepare(str(source), "--model", "none", "--prompt-column", "x", "--completion-column", "z", "--yes")
    assert result.exit_code == 0 and '"completion": "c"' in (tmp_path / "d_prepared.jsonl").read_text()


def _with(index: int, prompt: str | None = None, completion: str | None = None):
    rows = list(ROWS)
    p, c = rows[index]
    rows[index] = (p if prompt is None else prompt, c if completion is None else completion)
    return rows


CRAFTED = {
    "invalid": _with(3, completion=""),
    "too_few": ROWS[:5],
    "duplicates": ROWS + [ROWS[2]],
    "empty_fields": _with(4, prompt="  "),
    "too_long": _with(5, prompt="word " * 300 + "\n\n###\n\n"),
    "separators": _with(6, prompt="No separator here"),
    "completion_start": _with(8, completion="no space END"),
    "endings": _with(9, completion=" no ending"),
}


def test_a_clean_file_raises_no_finding(tmp_path, tokenizer):
    records = load(write_as(tmp_path / "clean.csv", ROWS))
    assert run_checks(records, tokenizer, max_tokens=256) == []


@pytest.mark.parametrize("check", sorted(CRAFTED))
def test_each_check_fires_on_its_crafted_file_alone(tmp_path, tokenizer, check):
    records = load(write_as(tmp_path / "crafted.csv", CRAFTED[check]))
    findings = run_checks(records, tokenizer, max_tokens=256)
    assert [f.check for f in findings] == [check], [f.message for f in findings]


def test_yes_applies_every_fix_and_the_result_is_clean(tmp_path, tokenizer, tiny_model_dir):
    rows = ROWS + [ROWS[2]]
    rows[3] = (rows[3][0], "")
    rows[4] = ("  ", rows[4][1])
    rows[5] = ("word " * 300 + "\n\n###\n\n", rows[5][1])
    rows[6] = ("No separator here", rows[6][1])
    rows[9] = (rows[9][0], " no ending")
    source = write_as(tmp_path / "messy.tsv", rows)
    result = prepare(str(source), "--model", str(tiny_model_dir), "--max-tokens", "256", "--yes")
    assert result.exit_code == 0, result.output
    for fix in ("remove 1 invalid example(s)", "remove 1 duplicate(s)", "remove 1 example(s) with empty fields",
                "remove 1 over-long example(s)", "append '\\n\\n###\\n\\n' to 1 prompt(s)", "append ' END' to 1 completion(s)"):
        assert f"fixed: {fix}" in result.output, result.output
    out = tmp_path / "messy_prepared.jsonl"
    assert run_checks(load(out), tokenizer, max_tokens=256) == []
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(examples) == 57 and {"prompt": "No separator here\n\n###\n\n", "completion": ROWS[6][1]} in examples


def test_declining_a_fix_for_an_error_writes_nothing(tmp_path):
    source = write_as(tmp_path / "bad.csv", CRAFTED["invalid"])
    result = prepare(str(source), "--model", "none", input="n\n")
    assert result.exit_code == 1
    assert "row 4: 'completion' is empty" in result.output and "nothing written" in result.output
    assert not (tmp_path / "bad_prepared.jsonl").exists()
    assert prepare(str(source), "--model", "none", input="").exit_code == 1  # a script without --yes: no guessing


def test_validation_split_is_seeded(tmp_path):
    source = write_as(tmp_path / "d.jsonl", ROWS)

    def split(seed: str) -> tuple[list, list]:
        result = prepare(str(source), "--model", "none", "--validation-split", "0.1", "--seed", seed, "--yes")
        assert result.exit_code == 0, result.output
        return tuple([json.loads(x) for x in (tmp_path / f"d_prepared_{part}.jsonl").read_text().splitlines()]
                     for part in ("train", "valid"))

    train, valid = split("1")
    assert (len(train), len(valid)) == (54, 6)
    assert sorted(json.dumps(e) for e in train + valid) == sorted(json.dumps(e) for e in map(json.loads, expected_jsonl().splitlines()))
    assert split("1") == (train, valid)
    assert split("2") != (train, valid)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "xlsx"])
def test_chat_messages_round_trip_from_every_container(tmp_path, fmt):
    from tests.data import chat_jsonl

    chats = [json.loads(line) for line in chat_jsonl(12).decode().splitlines()]
    if fmt == "jsonl":
        source = tmp_path / "chat.jsonl"
        source.write_bytes(chat_jsonl(12))
    elif fmt == "json":
        source = tmp_path / "chat.json"
        source.write_text(json.dumps(chats))
    else:  # a spreadsheet column holding each conversation as JSON
        source = write_as(tmp_path / f"chat.{fmt}", [(json.dumps(c["messages"]),) for c in chats], header=("messages",))
    result = prepare(str(source), "--model", "none", "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.jsonl").read_bytes() == chat_jsonl(12)
