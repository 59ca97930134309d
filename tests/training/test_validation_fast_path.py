"""The upload check's fast paths give the same verdict as the reference path (json +
example_format) on every line: same summary, or the same error on the same line. Two fast paths:
the compiled line scanner (worker/training/_linescan.c, `feed_block`) and typed msgspec decoding
(`feed`, and `feed_block` where the scanner is not built)."""

from __future__ import annotations

import json
import random

import pytest

from worker.training import validation
from worker.training.validation import InvalidExample, LineValidator

CHAT = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
COMPLETION = b'{"prompt": "p", "completion": " c"}'
WEIGHTED = b'{"messages": [{"role": "assistant", "content": "a", "weight": 1}]}'
EXTRA_KEYS = b'{"messages": [{"role": "assistant", "content": "a", "name": "bot", "extra": [1, {"x": null}]}]}'
ESCAPES = b'{"messages": [{"role": "assistant", "content": "\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uD83D\\uDE00"}]}'
UNICODE = b'{"messages": [{"role": "assistant", "content": "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f"}]}'
SPACED = b'\t{ "messages" :\t[ { "role" : "assistant" , "content" : "a" } ] }\r'

# Lines that follow a valid first line of each format, so the fast path is the one that sees them.
TRICKY = [
    CHAT, COMPLETION, b"", b"   ", b"\r", b"\xc2\xa0",
    WEIGHTED, b'{"messages": [{"role": "assistant", "content": "a", "weight": 1.0}]}',
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
    EXTRA_KEYS,
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
    # what the compiled scanner must leave to the reference path, or get right
    b'{"messag\\u0065s": [{"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "pr\\u006fmpt": "p"}',
    b'{"prompt": "p", "completion": "c", "messag\\u0065s": []}',
    b'{"messages": [{"role": "assist\\u0061nt", "content": "a"}]}',
    b'{"messages": [{"role": "assistant", "cont\\u0065nt": 5, "content": "a"}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "w\\u0065ight": 7}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 0}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": -0}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 1e0}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": "1"}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 1, "weight": 0}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "weight": 01}]}',
    b'{"messages": [{"role": "assistant", "content": "a", "content": 5}]}',
    ESCAPES, UNICODE,
    b'{"messages": [{"role": "assistant", "content": "\xc0\xaf"}]}',  # an overlong
    b'{"messages": [{"role": "assistant", "content": "\xed\xa0\x80"}]}',  # a surrogate, encoded
    b'{"messages": [{"role": "assistant", "content": "\xf4\x90\x80\x80"}]}',  # past U+10FFFF
    b'{"messages": [{"role": "assistant", "content": "\xe2\x82"}]}',  # cut short
    b'{"messages": [{"role": "assistant", "content": "a\x01b"}]}',
    b'{"messages": [{"role": "assistant", "content": "a\\x"}]}', b'{"messages": [{"role": "assistant", "content": "\\u12"}]}',
    b'{"messages": [{"role": "assistant", "content": "a\\"}]}', b'{"messages": [{"role": "assistant", "content": "a',
    SPACED,
    b'{"messages": [{"role": "assistant", "content": "a"}] "x": 1}',
    b'{"messages": [{"role": "assistant", "content": "a"},]}', b'{"messages": [{"role": "assistant", "content": "a"}]',
    b'{"messages": [{"role": "assistant", "content": "a"}], "": {"": [[], {}, -0.5e+10, 1E-2, true, false, null]}}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": -}', b'{"messages": [{"role": "assistant", "content": "a"}], "n": 1.}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": .5}', b'{"messages": [{"role": "assistant", "content": "a"}], "n": tru}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": Infinity}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": -Infinity}',
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": ' + b"7" * 5000 + b"}",
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": ' + b"[" * 100 + b"]" * 100 + b"}",
    b'{"messages": [{"role": "assistant", "content": "a"}], "n": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"messages": [{"role": "assistant", "content": "a"}], 1: 2}', b'{"messages": [{"role": "assistant", "content": "a"}], "k"}',
    b'{"prompt": "", "completion": "\\n"}', b'{"prompt": "", "completion": " \\u0020\\t"}',
    b'{"prompt": "", "completion": "\xe3\x80\x80"}', b'{"prompt": "", "completion": "\\u00e9"}',
    b'{"prompt": "", "completion": " \x7f"}', b'{"prompt": "p", "prompt": "q", "completion": "c"}',
    b'{"prompt": "p", "completion": "c", "input": 1}', b'{"prompt": "p", "completion": "c", "non_preferred_output": 1}',
]


def verdict(lines: list[bytes], path: str, monkeypatch: pytest.MonkeyPatch):
    """The lines' verdict by one path: "msgspec" (`feed`), "scanner" (`feed_block`, compiled) or
    "reference" (no fast path at all)."""
    with monkeypatch.context() as m:
        if path == "reference":
            m.setattr(validation, "_FAST", {"chat": None, "completion": None})
            m.setattr(validation, "_linescan", None)
        validator = LineValidator()
        try:
            if path == "msgspec":
                validator.feed(lines)
            else:
                validator.feed_block(b"\n".join(lines))
            summary = validator.finish()
        except InvalidExample as exc:
            return ("error", exc.line, exc.reason)
        return ("ok", summary.format, summary.n_examples)


def test_the_scanner_is_built():
    """setup.py compiles it wherever a C compiler is found, as here: without it uploads are checked
    at a third of the speed (msgspec)."""
    assert validation.COMPILED_SCANNER


@pytest.mark.parametrize("path", ["msgspec", "scanner"])
@pytest.mark.parametrize("first", [CHAT, COMPLETION], ids=["chat", "completion"])
@pytest.mark.parametrize("line", TRICKY)
def test_fast_path_agrees_with_the_reference(path, first, line, monkeypatch):
    lines = [first, line, first]
    assert verdict(lines, path, monkeypatch) == verdict(lines, "reference", monkeypatch)


def _mutants(seed: int, n: int):
    """Valid lines of both formats, each broken (or not) by a few random byte edits."""
    rng = random.Random(seed)
    valid = [CHAT, COMPLETION, WEIGHTED, EXTRA_KEYS, ESCAPES, UNICODE,
             b'{"messages": [{"role": "system", "content": "s\\u00e9 \xc3\xa9"}, {"role": "assistant", "content": "a",'
             b' "weight": 0}], "meta": {"k": [1, -2.5e3, true, null]}}',
             b'{"prompt": "p \\"q\\"", "completion": " c\xe2\x82\xac", "id": 12}']
    alphabet = b'{}[]":,\\ \t\r0123456789-+.eEtrufalsnbu\x00\x1f\x7f\x80\xbf\xc3\xe2\xed\xf0\xff'
    for _ in range(n):
        line = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(line) + 1)
            edit = rng.randrange(3)
            if edit == 0 and at < len(line):
                del line[at]
            elif edit == 1:
                line.insert(at, rng.choice(alphabet))
            elif at < len(line):
                line[at] = rng.choice(alphabet)
        yield bytes(line)


@pytest.mark.parametrize("first", [CHAT, COMPLETION], ids=["chat", "completion"])
def test_the_scanner_agrees_with_the_reference_on_broken_lines(first, monkeypatch):
    disagreements = []
    for line in _mutants(seed=len(first), n=4000):
        lines = [first, line, first]
        if verdict(lines, "scanner", monkeypatch) != verdict(lines, "reference", monkeypatch):
            disagreements.append(line)
    assert disagreements == []


def test_the_scanner_takes_valid_lines_itself(monkeypatch):
    """Only the first line and the lines the scanner leaves (weight 1.0, an escaped key) reach the
    reference path: the scanner is not a pass-through."""
    calls = []
    reference = LineValidator._reference
    monkeypatch.setattr(LineValidator, "_reference", lambda self, n, raw: calls.append(n) or reference(self, n, raw))
    plain = [CHAT, WEIGHTED, EXTRA_KEYS, ESCAPES, UNICODE, SPACED, b"", b"  \r"]
    odd = [b'{"messages": [{"role": "assistant", "content": "a", "weight": 1.0}]}',
           b'{"messag\\u0065s": [{"role": "assistant", "content": "a"}]}']
    validator = LineValidator()
    validator.feed_block(b"\n".join(plain * 20 + odd[:1] + plain + odd[1:] + plain) + b"\n")
    assert calls == [1, 161, 170]
    assert validator.n_examples == 6 * 22 + 2 and validator.line == 8 * 22 + 2


def test_msgspec_path_is_taken_for_valid_lines(monkeypatch):
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
