"""The upload check's fast path (typed msgspec decoding) gives the same verdict as the reference
path (json + example_format) on every line: same summary, or the same error on the same line."""

from __future__ import annotations

import json

import pytest

from worker.training import validation
from worker.training.validation import InvalidExample, LineValidator

CHAT = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
COMPLETION = b'{"prompt": "p", "completion": " c"}'

# Lines that follow a valid first line of each format, so the fast path is the one that sees them.
TRICKY = [
    CHAT, COMPLETION, b"", b"   ", b"\r", b"\xc2\xa0",
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 1}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 1.0}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": true}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 2}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": null}]}',
    b'{"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "q"}]}',
    b'{"messages": []}', b'{"messages": {}}', b'{"messages": null}',
    b'{"messages": [{"role": "robot", "content": "x"}]}',
    b'{"messages": [{"role": "assistant", "content": 3}]}',
    b'{"messages": [{"role": "assistant"}]}',
    b'{"messages": ["hi"]}',
    b'{"messages": [{"role": "assistant", "content": "a", "name": "bot", "extra": [1, {"x": null}]}]}',
    b'{"messages": [{"role": "assistant", "role": "user", "content": "a"}]}',
    b'{"messages": [{"role": "user", "role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "messages": 5}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "prompt": "p", "completion": "c"}',
    b'{"prompt": "p", "completion": "c", "messages": [{"role": "assistant", "content": "a"}]}',
    b'{"prompt": "p", "completion": "   "}', b'{"prompt": "p", "completion": "\\u3000"}',
    b'{"prompt": "p"}', b'{"completion": "c"}', b'{"prompt": 1, "completion": "c"}',
    b'{"prompt": "p", "completion": "c", "completion": ""}',
    b'{"prompt": "caf\xe9", "completion": "x"}', b'{"prompt": "\\ud800", "completion": "x"}',
    b'{"prompt": "a\tb", "completion": "x"}', b'{"prompt": "\\u0000", "completion": "x"}',
    b'\xef\xbb\xbf{"prompt": "p", "completion": "c"}', b'{"prompt": "p", "completion": "c"} {"a": 1}',
    b'{"prompt": "p", "completion": "c",}', b'{"prompt": "p", "completion": "c", "n": NaN}',
    b'{"prompt": "p", "completion": "c", "n": 1e999}', b'{"prompt": "p", "completion": "c", "n": 01}',
    b'[1, 2]', b'"text"', b'null', b'{"prompt": "p", "completion"',
    b'{"messages": [{"role": "assistant", "content": "a"}], "input": {"messages": []}}',
    b'{"prompt": "p", "completion": "c", "preferred_output": []}',
]


def verdict(lines: list[bytes], fast: bool, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(validation, "_FAST", {"chat": None, "completion": None})
        validator = LineValidator()
        try:
            validator.feed(lines)
            summary = validator.finish()
        except InvalidExample as exc:
            return ("error", exc.line, exc.reason)
        return ("ok", summary.format, summary.n_examples)


@pytest.mark.parametrize("first", [CHAT, COMPLETION], ids=["chat", "completion"])
@pytest.mark.parametrize("line", TRICKY)
def test_fast_path_agrees_with_the_reference(first, line, monkeypatch):
    lines = [first, line, first]
    assert verdict(lines, True, monkeypatch) == verdict(lines, False, monkeypatch)


def test_fast_path_is_taken_for_valid_lines(monkeypatch):
    calls = []
    reference = LineValidator._reference
    monkeypatch.setattr(LineValidator, "_reference", lambda self, n, raw: calls.append(n) or reference(self, n, raw))
    validator = LineValidator()
    odd = b'{"messages": [{"role": "assistant", "content": "a", "weight": 1.0}]}'  # valid; the fast path says no
    validator.feed([CHAT] * 50 + [odd] + [CHAT] * 10)
    assert calls == [1, 51]  # the first line sets the format; only the line the fast path refuses goes back
    assert validator.n_examples == 61 and validator.finish().format == "chat"


def test_feeding_in_blocks_counts_lines_across_blocks():
    validator = LineValidator()
    validator.feed([CHAT, CHAT])
    validator.feed([b""])
    with pytest.raises(InvalidExample) as exc:
        validator.feed([CHAT, json.dumps({"prompt": "p", "completion": "c"}).encode()])
    assert exc.value.line == 5 and "completion format" in exc.value.reason
