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
from collections.abc import Iterable
from dataclasses import dataclass

ROLES = {"system", "developer", "user", "assistant"}


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


def validate_lines(lines: Iterable[bytes]) -> DataSummary:
    """Check JSONL given as raw lines (bytes). Raise InvalidExample on the first bad line."""
    fmt: str | None = None
    count = 0
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidExample(number, f"not valid UTF-8 (byte {exc.start})") from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidExample(number, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        try:
            this = example_format(obj)
        except ValueError as exc:
            raise InvalidExample(number, str(exc)) from None
        if fmt is None:
            fmt = this
        elif this != fmt:
            raise InvalidExample(number, f"{this} format, but the file started in {fmt} format")
        count += 1
    if fmt is None:
        raise InvalidExample(0, "the file has no examples")
    return DataSummary(format=fmt, n_examples=count)
