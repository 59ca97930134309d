import json

import pytest

from worker.training import IGNORE_INDEX, detect_format, read_jsonl, tokenize_example

CHAT = {
    "messages": [
        {"role": "system", "content": "You are a terse SYSTEMPROMPT bot."},
        {"role": "user", "content": "First USERQUESTION here?"},
        {"role": "assistant", "content": "Ahoy matey! First answer."},
        {"role": "user", "content": "Second USERQUESTION?"},
        {"role": "assistant", "content": "Ahoy matey! Second answer."},
    ]
}


def learned_spans(tokenizer, input_ids, labels):
    """Decoded text of each maximal run of learned tokens."""
    spans, current = [], []
    for token, label in zip(input_ids, labels):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token  # labels are the tokens themselves; the model shifts them
            current.append(token)
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


def test_chat_learns_only_assistant_content_and_end_of_turn(tokenizer):
    ids, labels, truncated, _ = tokenize_example(tokenizer, CHAT, 1024)
    eot = tokenizer.eos_token  # SmolLM2 closes every turn with <|im_end|>
    assert learned_spans(tokenizer, ids, labels) == [f"Ahoy matey! First answer.{eot}", f"Ahoy matey! Second answer.{eot}"]
    assert truncated == 0
    # The input is the whole conversation exactly as the chat template renders it.
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert tokenizer.decode(ids) == rendered
    learned_text = "".join(learned_spans(tokenizer, ids, labels))
    assert "USERQUESTION" not in learned_text and "SYSTEMPROMPT" not in learned_text and "assistant" not in learned_text


def test_assistant_message_with_weight_zero_is_not_learned(tokenizer):
    example = json.loads(json.dumps(CHAT))
    example["messages"][2]["weight"] = 0
    ids, labels, _, _ = tokenize_example(tokenizer, example, 1024)
    assert learned_spans(tokenizer, ids, labels) == [f"Ahoy matey! Second answer.{tokenizer.eos_token}"]
    assert "First answer" in tokenizer.decode(ids)  # still there as context


def test_completion_format_learns_completion_and_eos(tokenizer):
    example = {"prompt": "Translate to French: cheese =>", "completion": " fromage"}
    ids, labels, _, _ = tokenize_example(tokenizer, example, 1024)
    assert tokenizer.decode(ids) == f"Translate to French: cheese => fromage{tokenizer.eos_token}"
    assert learned_spans(tokenizer, ids, labels) == [f" fromage{tokenizer.eos_token}"]


def test_long_example_is_truncated_and_reported(tokenizer):
    full_ids, _, _, _ = tokenize_example(tokenizer, CHAT, 1024)
    ids, labels, truncated, cut = tokenize_example(tokenizer, CHAT, 20)
    assert len(ids) == len(labels) == 20
    assert ids == full_ids[:20]
    assert truncated == len(full_ids) - 20
    assert cut  # the answers lay beyond the first 20 tokens


def test_detect_format():
    assert detect_format(CHAT) == "chat"
    assert detect_format({"prompt": "a", "completion": "b"}) == "completion"
    with pytest.raises(ValueError):
        detect_format({"text": "hello"})


def test_read_jsonl_reports_bad_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{not json}\n')
    with pytest.raises(ValueError, match="line 3"):
        read_jsonl(path)
    path.write_text('{"prompt": "a", "completion": "b"}\n\n')
    assert read_jsonl(path) == [{"prompt": "a", "completion": "b"}]
