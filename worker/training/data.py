"""Training data: read JSONL, tokenize with loss masks (batches: ``batching.py``).

Two formats are accepted (one per line):

* chat: ``{"messages": [{"role": ..., "content": ...}, ...]}`` — the model learns
  the content of each assistant message plus the end-of-turn token closing it,
  rendered through the tokenizer's own chat template. An assistant message with
  ``"weight": 0`` is context only (not learned).
* completion (legacy): ``{"prompt": str, "completion": str}`` — the model learns
  the completion followed by the EOS token.

Labels are -100 wherever no loss is taken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .validation import example_format

if TYPE_CHECKING:
    from .callbacks import TrainingCallbacks

IGNORE_INDEX = -100


def read_jsonl(path: str | Path) -> list[dict]:
    """Parse a JSONL file; blank lines are skipped, bad lines raise with their number."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not valid JSON: {e.msg}") from None
            if not isinstance(example, dict):
                raise ValueError(f"{path}: line {line_no} is not a JSON object")
            examples.append(example)
    return examples


def detect_format(example: dict) -> Literal["chat", "completion"]:
    """Say which training format an example uses; raise ValueError (with the reason) if it breaks
    the rules the API checked it against at upload."""
    return example_format(example)  # type: ignore[return-value]


class TokenizedExample(NamedTuple):
    input_ids: list[int]
    labels: list[int]
    truncated_tokens: int  # tokens dropped to fit max_seq_len (0 = not truncated)
    cut_answer: bool = False  # the cut fell inside (or before) a learned answer: learned tokens were dropped


def tokenize_example(tokenizer: Any, example: dict, max_seq_len: int) -> TokenizedExample:
    """Token ids and labels for one example, truncated from the right to ``max_seq_len``.

    Over-long rule: the first ``max_seq_len`` tokens are kept (the conversation's start, which the
    later turns depend on); ``cut_answer`` says whether learned tokens were among those dropped.
    """
    if detect_format(example) == "chat":
        segments = _chat_segments(tokenizer, example["messages"])
    else:
        segments = [(example["prompt"], False), (example["completion"] + tokenizer.eos_token, True)]
    input_ids: list[int] = []
    labels: list[int] = []
    for text, learn in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        input_ids += ids
        labels += ids if learn else [IGNORE_INDEX] * len(ids)
    dropped = max(0, len(input_ids) - max_seq_len)
    cut = any(label != IGNORE_INDEX for label in labels[max_seq_len:])
    return TokenizedExample(input_ids[:max_seq_len], labels[:max_seq_len], dropped, cut)


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _chat_segments(tokenizer: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, learn?) pieces.

    Renders growing prefixes of the conversation and takes string differences:
    the text added by an assistant turn, minus its header (the generation
    prompt), is its content and closing; we learn the content up to and
    including the first special token after it (the end-of-turn token).
    """
    if not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError('"messages" must be a non-empty list of objects with a "role"')
    weights = [m.get("weight", 1) for m in messages]
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    segments: list[tuple[str, bool]] = []
    done = ""  # rendered text already split into segments
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        full = _render(tokenizer, messages[: i + 1])
        if not (header.startswith(done) and full.startswith(header)):
            raise ValueError(f"the chat template does not render message {i} as an extension of the messages before it")
        before, learned, after = _split_turn(tokenizer, full[len(header) :], message.get("content"))
        segments += [(header[len(done) :] + before, False), (learned, weights[i] != 0), (after, False)]
        done = full
    segments.append((_render(tokenizer, messages)[len(done) :], False))
    return [s for s in segments if s[0]]


def _split_turn(tokenizer: Any, turn: str, content: Any) -> tuple[str, str, str]:
    """Split an assistant turn into (text before content, content + end-of-turn token, rest)."""
    content = content if isinstance(content, str) else ""
    found = turn.find(content) if content else -1  # -1: template rewrote it; learn the whole turn
    start, content_end = (found, found + len(content)) if found >= 0 else (0, 0)
    ends = [(turn.find(tok, content_end), tok) for tok in tokenizer.all_special_tokens if tok]
    ends = [(pos, tok) for pos, tok in ends if pos >= 0]
    if not ends:
        return turn[:start], turn[start:], ""
    pos, tok = min(ends)
    cut = pos + len(tok)
    return turn[:start], turn[start:cut], turn[cut:]


def pad_id(tokenizer: Any) -> int:
    """Padding id: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_examples(path: Path, tokenizer: Any, max_len: int, name: str,
                  callbacks: TrainingCallbacks) -> list[tuple[list[int], list[int]]]:
    """Tokenize a JSONL file. Over-long rule: keep the first ``max_len`` tokens; an example left
    with nothing to learn is skipped. Both counts, and how many answers were cut, are reported."""
    examples, truncated, cut_answers, empty = [], 0, 0, 0
    for index, raw in enumerate(read_jsonl(path)):
        try:
            ids, labels, dropped, cut = tokenize_example(tokenizer, raw, max_len)
        except ValueError as e:
            raise ValueError(f"{name} example {index + 1}: {e}") from None
        truncated += dropped > 0
        cut_answers += cut
        if all(label == IGNORE_INDEX for label in labels[1:]):  # the first token is never predicted
            empty += 1
            continue
        examples.append((ids, labels))
    if truncated:
        message = (f"{truncated} {name} example(s) were longer than {max_len} tokens and were truncated to their "
                   f"first {max_len} tokens ({cut_answers} cut inside a learned answer)")
        callbacks.on_event(message, level="warn", data={"truncated_examples": truncated, "max_seq_len": max_len,
                                                         "cut_answers": cut_answers})
    if empty:
        message = f"{empty} {name} example(s) have no tokens to learn (all assistant turns weight 0, or cut off) and were skipped"
        callbacks.on_event(message, level="warn", data={"skipped_examples": empty})
    if not examples:
        raise ValueError(f"the {name} file has no usable examples")
    n_tokens = sum(len(ids) for ids, _ in examples)
    callbacks.on_event(f"Tokenized {len(examples)} {name} examples ({n_tokens} tokens)")
    return examples
