"""The rules a training example must follow, shared by the API's upload check and the worker.

Three formats, as OpenAI documents them:
  chat:       {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
              (an assistant message may carry "weight": 0 or 1)
  completion: {"prompt": "...", "completion": "..."}   (the legacy format)
  preference: {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": "..."}],
               "non_preferred_output": [{"role": "assistant", "content": "..."}]}   (DPO jobs)
A file holds one format throughout.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

_linescan = None  # the compiled line scanner: setup.py builds it where a C compiler is found
if os.environ.get("WHETSTONE_LINE_SCANNER", "on") != "off":  # "off": msgspec only (bench/upload.py's baseline)
    try:
        from worker.training import _linescan
    except ImportError:  # not built (no C compiler at install): the msgspec path, slower, same verdicts
        pass
COMPILED_SCANNER = _linescan is not None

ROLES = {"system", "developer", "user", "assistant"}
NO_EXAMPLES = "the file has no examples"  # (the upload check words it too)


class InvalidExample(ValueError):
    """A line that breaks the rules; `line` is 1-based (0: the file as a whole)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.line = line
        self.reason = reason


@dataclass
class DataSummary:
    format: str
    n_examples: int


PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")


def example_format(obj: object) -> str:
    """Return "chat", "completion" or "preference" for a valid example, or raise ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj and ("prompt" in obj or "completion" in obj):
        raise ValueError("an example is either chat ('messages') or completion ('prompt', 'completion'), not both")
    if any(key in obj for key in PREFERENCE_KEYS):
        _check_preference(obj)
        return "preference"
    if "messages" in obj:
        _check_messages(obj["messages"])
        return "chat"
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise ValueError(f"'{key}' must be a string")
        if not obj["completion"].strip():
            raise ValueError("'completion' is empty")
        return "completion"
    raise ValueError("expected a 'messages' list (chat format), 'prompt' and 'completion' strings, or 'input', "
                     "'preferred_output' and 'non_preferred_output' (preference format, for DPO)")


def _check_preference(obj: dict) -> None:
    """OpenAI's DPO format: a conversation so far, then one preferred and one non-preferred assistant reply."""
    for key in PREFERENCE_KEYS:
        if key not in obj:
            raise ValueError(f"preference format: '{key}' is missing")
    if not isinstance(obj["input"], dict) or "messages" not in obj["input"]:
        raise ValueError("preference format: 'input' must be an object with a 'messages' list")
    messages = obj["input"]["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("preference format: 'input.messages' must be a non-empty list")
    for i, message in enumerate(messages):
        _check_message(message, f"input.messages[{i}]")
        if "weight" in message:
            raise ValueError(f"input.messages[{i}].weight is not allowed in the preference format")
    if messages[-1].get("role") == "assistant":
        raise ValueError("preference format: 'input.messages' must not end with an assistant message (the "
                         "outputs are the assistant's reply)")
    for key in ("preferred_output", "non_preferred_output"):
        output = obj[key]
        if not isinstance(output, list) or len(output) != 1:
            raise ValueError(f"preference format: '{key}' must be a list of exactly one assistant message")
        _check_message(output[0], f"{key}[0]")
        if output[0]["role"] != "assistant":
            raise ValueError(f"{key}[0].role must be 'assistant', got {output[0]['role']!r}")
        if "weight" in output[0]:
            raise ValueError(f"{key}[0].weight is not allowed in the preference format")
        if not output[0]["content"].strip():
            raise ValueError(f"{key}[0].content is empty")
    if obj["preferred_output"][0]["content"] == obj["non_preferred_output"][0]["content"]:
        raise ValueError("preference format: the preferred and non-preferred outputs are identical")


def _check_message(message: object, where: str) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}")
    if not isinstance(message.get("content"), str):
        raise ValueError(f"{where}.content must be a string")


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    has_assistant = False
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _check_message(message, where)
        role = message["role"]
        if "weight" in message:
            if role != "assistant":
                raise ValueError(f"{where}.weight is only allowed on assistant messages")
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise ValueError(f"{where}.weight must be 0 or 1")
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        raise ValueError("'messages' has no assistant message to learn from")


class LineTooLong(InvalidExample):
    """A line longer than the caller's limit (`feed_block`'s max_line_bytes)."""

    def __init__(self, line: int, limit: int) -> None:
        super().__init__(line, f"longer than the limit of {limit} bytes.")


class LineValidator:
    """Push-style check of JSONL given as raw lines (bytes), in order, in as many `feed` (a list of
    lines) or `feed_block` (whole lines in one bytes) calls as suit the caller (an upload checks
    each block as it arrives). Raises InvalidExample on the first bad line; `finish` gives the summary.

    The first example, and every line a fast path does not accept, take the reference path (`json`
    and `example_format`), which decides and words the error. The fast paths accept only what the
    reference path accepts with the file's format, so the outcome is the same, line for line:
    `feed_block` scans the lines in place with the compiled scanner (worker/training/_linescan.c,
    without the interpreter lock); `feed`, and `feed_block` where the scanner was not built, decode
    each line with a typed msgspec decoder (C speed, one Python call a line)."""

    def __init__(self) -> None:
        self.format: str | None = None
        self.first_line = 0  # the line of the first example (0: none yet)
        self.n_examples = 0
        self.line = 0
        self._fast = None

    def feed(self, lines: Iterable[bytes]) -> None:
        fast, count, number = self._fast, self.n_examples, self.line
        try:
            for raw in lines:
                number += 1
                if fast is not None and (len(raw) <= _MAX_DIGITS or not _too_many_digits(raw)):
                    try:
                        if fast(raw):
                            count += 1
                            continue
                    except (ValueError, RecursionError):  # msgspec's DecodeError/ValidationError, bad UTF-8
                        pass
                if self._reference(number, raw):
                    count += 1
                    fast = self._fast
        finally:
            self.n_examples, self.line = count, number

    def feed_block(self, data: bytes, max_line_bytes: int | None = None, start: int = 0, end: int | None = None) -> None:
        """Whole lines, `data[start:end]` (the last newline may be missing); a line longer than
        `max_line_bytes` is an error too (LineTooLong), in its place among the others."""
        end = len(data) if end is None else end
        if _linescan is None:
            self._feed_split(data[start:end], max_line_bytes)
            return
        scan = _SCAN.get(self.format)
        limit = max_line_bytes if max_line_bytes is not None else end - start
        pos = start
        while pos < end:
            if scan is not None:  # as far as the scanner accepts the lines
                lines, examples, pos, status = _linescan.scan(data, pos, end, scan, limit)
                self.line += lines
                self.n_examples += examples
                if status == _linescan.DONE:
                    return
            newline = data.find(b"\n", pos, end)
            stop = end if newline < 0 else newline
            if stop - pos > limit:
                raise LineTooLong(self.line + 1, limit)
            self.line += 1
            if self._reference(self.line, data[pos:stop]):
                self.n_examples += 1
                scan = _SCAN.get(self.format)
            pos = stop + 1

    def _feed_split(self, data: bytes, max_line_bytes: int | None) -> None:
        lines = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            lines.pop()
        if max_line_bytes is not None and lines and max(map(len, lines)) > max_line_bytes:  # (at C speed)
            first = next(i for i, line in enumerate(lines) if len(line) > max_line_bytes)
            self.feed(lines[:first])  # an error before it comes first
            raise LineTooLong(self.line + 1, max_line_bytes)
        self.feed(lines)

    def _reference(self, number: int, raw: bytes) -> bool:
        """The line checked the plain way: True for an example, False for a blank line."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidExample(number, f"not valid UTF-8 (byte {exc.start})") from None
        if not text.strip():
            return False
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidExample(number, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # an int of over 4300 digits; nesting too deep
            raise InvalidExample(number, f"invalid JSON ({exc})") from None
        try:
            this = example_format(obj)
        except ValueError as exc:
            raise InvalidExample(number, str(exc)) from None
        if self.format is None:
            # (preference pairs have no fast path: the reference path only)
            self.format, self.first_line, self._fast = this, number, _FAST.get(this)
        elif this != self.format:
            raise InvalidExample(number, f"{this} format, but the file started in {self.format} format")
        return True

    def finish(self) -> DataSummary:
        if self.format is None:
            raise InvalidExample(0, NO_EXAMPLES)
        return DataSummary(format=self.format, n_examples=self.n_examples)


def validate_lines(lines: Iterable[bytes]) -> DataSummary:
    """Check JSONL given as raw lines (bytes). Raise InvalidExample on the first bad line."""
    validator = LineValidator()
    validator.feed(lines)
    return validator.finish()


# --- the fast path: typed decoders that accept a subset of what example_format accepts ---
class _Message(msgspec.Struct, gc=False):
    role: Literal["system", "developer", "user", "assistant"]  # ROLES
    content: str
    weight: Literal[0, 1] | UnsetType = UNSET


class _Chat(msgspec.Struct, gc=False):
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    # A key of another format makes the line something the reference path words (mixed, or preference).
    prompt: UnsetType = UNSET
    completion: UnsetType = UNSET
    input: UnsetType = UNSET
    preferred_output: UnsetType = UNSET
    non_preferred_output: UnsetType = UNSET


class _Completion(msgspec.Struct, gc=False):
    prompt: str
    completion: str
    messages: UnsetType = UNSET  # a line with "messages" is mixed: the reference path says so
    input: UnsetType = UNSET  # and a preference key makes it a preference example
    preferred_output: UnsetType = UNSET
    non_preferred_output: UnsetType = UNSET


_decode_chat = msgspec.json.Decoder(_Chat).decode
_decode_completion = msgspec.json.Decoder(_Completion).decode


def _fast_chat(raw: bytes) -> bool:
    has_assistant = False
    for message in _decode_chat(raw).messages:
        if message.role == "assistant":
            has_assistant = True
        elif message.weight is not UNSET:
            return False
    return has_assistant


def _fast_completion(raw: bytes) -> bool:
    return bool(_decode_completion(raw).completion.strip())


_FAST = {"chat": _fast_chat, "completion": _fast_completion}
# msgspec skips an unknown key's integer of any length, which json.loads refuses past this many
# digits: such a line is left to the reference path (the scanner leaves it too: MAX_INT_DIGITS).
_MAX_DIGITS = sys.get_int_max_str_digits() or sys.maxsize
_too_many_digits = re.compile(rb"[0-9]{%d}" % min(_MAX_DIGITS + 1, 1 << 20)).search
# The formats the scanner knows (preference lines take the reference path only).
_SCAN = {"chat": _linescan.CHAT, "completion": _linescan.COMPLETION} if _linescan is not None else {}
