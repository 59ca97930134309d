"""Run an evaluation: greedy answers and reference perplexity, fine-tuned and base, one model load.

The base model's numbers come from the same weights with the LoRA adapter switched off
(`disable_adapter`), so the two columns differ only by the fine-tune.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from worker.training.data import IGNORE_INDEX, pad_id, read_jsonl, tokenize_example
from worker.training.model_loading import load_base_model, resolve_device
from worker.training.validation import example_format

from .metrics import generation_metrics


def split_example(example: dict) -> tuple[Any, str]:
    """(prompt, reference): chat -> the messages before the last assistant turn and its content."""
    if example_format(example) == "completion":
        return example["prompt"], example["completion"]
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def _prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, device) -> list[str]:
    outputs = []
    for ids in prompts:
        input_ids = torch.tensor([ids], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer))
        outputs.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
    return outputs


@torch.no_grad()
def _perplexity(model: Any, tokenized: list[tuple[list[int], list[int]]], device) -> float:
    """exp(token-weighted mean loss) on the learned (reference) tokens, as training counts them.
    One example at a time, so there is no padding to mask."""
    loss_sum, n_tokens = 0.0, 0
    for ids, labels in tokenized:
        logits = model(input_ids=torch.tensor([ids], device=device)).logits.float()
        targets = torch.tensor([labels], device=device)[:, 1:]
        mask = targets != IGNORE_INDEX
        if mask.any():
            loss_sum += torch.nn.functional.cross_entropy(logits[:, :-1][mask], targets[mask], reduction="sum").item()
            n_tokens += int(mask.sum())
    return math.exp(loss_sum / n_tokens) if n_tokens else float("nan")


def evaluate(base_model_dir: Path, adapter_dir: Path, eval_file: Path, *, max_new_tokens: int | None = None,
             max_seq_len: int = 1024, device: str = "auto", quantization: str = "none") -> dict:
    """Metrics of the fine-tuned model and of its base on `eval_file`, plus every example's outputs.
    `quantization`: how the base was loaded when the adapter was trained (a QLoRA adapter's nf4/int8)."""
    from app.core.safe_loading import load_adapter

    examples = read_jsonl(eval_file)
    if not examples:
        raise ValueError("the evaluation file has no examples")
    dev = resolve_device(device)
    base, tokenizer = load_base_model(base_model_dir, dev, quantization)
    model = load_adapter(base, adapter_dir).eval()
    pairs = [split_example(e) for e in examples]
    prompts = [_prompt_ids(tokenizer, p) for p, _ in pairs]
    references = [r for _, r in pairs]
    if max_new_tokens is None:  # room for the longest reference and its end-of-turn token
        max_new_tokens = min(512, max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references) + 8)
    tokenized = [(t.input_ids, t.labels) for t in (tokenize_example(tokenizer, e, max_seq_len) for e in examples)]

    results, outputs = {}, {}
    for side in ("fine_tuned", "base"):
        if side == "base":
            with model.disable_adapter():
                outputs[side] = _generate(model, tokenizer, prompts, max_new_tokens, dev)
                ppl = _perplexity(model, tokenized, dev)
        else:
            outputs[side] = _generate(model, tokenizer, prompts, max_new_tokens, dev)
            ppl = _perplexity(model, tokenized, dev)
        results[side] = {**generation_metrics(outputs[side], references), "perplexity": ppl}
    samples = [{"prompt": p, "reference": r, "fine_tuned": f, "base": b}
               for (p, r), f, b in zip(pairs, outputs["fine_tuned"], outputs["base"])]
    return {"n_examples": len(examples), "max_new_tokens": max_new_tokens, "fine_tuned": results["fine_tuned"],
            "base": results["base"], "samples": samples}
