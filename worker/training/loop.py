"""The training loop: LoRA on a local base model, plain PyTorch, progress via callbacks.

``train(config, callbacks)`` loads the base model, wraps it with a PEFT LoRA
adapter, tokenizes the data, and runs AdamW with linear warm-up and decay.
It reports through ``callbacks``: ``on_event`` for log lines and metrics,
``on_checkpoint`` after each epoch, and polls ``should_stop`` before every step.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import LoraConfig, get_peft_model
from transformers import set_seed

from .config import TrainingConfig
from .data import IGNORE_INDEX, collate, pad_id, read_jsonl, tokenize_example
from .model_loading import atomic_directory, load_base_model, resolve_device

LLAMA_LIKE_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

Example = tuple[list[int], list[int]]


class TrainingCallbacks(Protocol):
    """How a run reports progress and learns it was cancelled (the worker implements this)."""

    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None: ...
    def should_stop(self) -> bool: ...
    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None: ...


class NullCallbacks:
    """Callbacks that ignore everything and never stop."""

    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        pass


@dataclass
class TrainingResult:
    steps: int  # optimizer steps taken
    trained_tokens: int  # tokens of the training examples processed, summed over epochs
    adapter_dir: Path | None  # None when stopped
    train_loss: float | None  # last logged training loss
    valid_loss: float | None  # last validation loss
    stopped: bool
    metrics: list[dict] = field(default_factory=list)  # one row per logged step


def _load_examples(path: Path, tokenizer: Any, max_len: int, name: str, callbacks: TrainingCallbacks) -> list[Example]:
    """Tokenize a JSONL file, reporting truncation and dropping examples with nothing to learn."""
    examples, truncated, empty = [], 0, 0
    for index, raw in enumerate(read_jsonl(path)):
        try:
            ids, labels, dropped = tokenize_example(tokenizer, raw, max_len)
        except ValueError as e:
            raise ValueError(f"{name} example {index + 1}: {e}") from None
        truncated += dropped > 0
        if all(label == IGNORE_INDEX for label in labels[1:]):  # the first token is never predicted
            empty += 1
            continue
        examples.append((ids, labels))
    if truncated:
        message = f"{truncated} {name} example(s) were longer than {max_len} tokens and were truncated"
        callbacks.on_event(message, level="warn", data={"truncated_examples": truncated, "max_seq_len": max_len})
    if empty:
        message = f"{empty} {name} example(s) have no tokens to learn (all assistant turns weight 0) and were skipped"
        callbacks.on_event(message, level="warn", data={"skipped_examples": empty})
    if not examples:
        raise ValueError(f"the {name} file has no usable examples")
    n_tokens = sum(len(ids) for ids, _ in examples)
    callbacks.on_event(f"Tokenized {len(examples)} {name} examples ({n_tokens} tokens)")
    return examples


def _lora_targets(model: Any, configured: list[str] | None) -> list[str] | str:
    if configured is not None:
        return configured
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return LLAMA_LIKE_MODULES if set(LLAMA_LIKE_MODULES) <= names else "all-linear"


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 1/(total-warmup) at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    return (total - step) / max(1, total - warmup)


def _loss_and_accuracy(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int, int]:
    """Mean next-token loss over label tokens, number of label tokens, number predicted right,
    and number of sequences whose label tokens were all predicted right (the legacy results'
    sequence accuracy).

    Logits are computed only at positions whose next token is learned (``logits_to_keep``),
    which spares most of the vocabulary projection for prompt tokens.
    """
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    logits, targets = logits.float(), targets[:, keep]
    mask = targets != IGNORE_INDEX
    loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    hits = logits.argmax(-1) == targets
    correct = int(hits[mask].sum())
    sequences_right = int((hits | ~mask).all(dim=1).sum())
    return loss, int(mask.sum()), correct, sequences_right


def _batches(examples: list[Example], batch_size: int, pad: int, device: torch.device, order: list[int]):
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start : start + batch_size]], pad)
        yield {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def _evaluate(model: Any, examples: list[Example], batch_size: int, pad: int, device: torch.device) -> tuple[float, float, float]:
    """Token-weighted mean loss, token accuracy and sequence accuracy over a dataset."""
    model.eval()
    loss_sum, n_tokens, n_correct, n_sequences_right = 0.0, 0, 0, 0
    for batch in _batches(examples, batch_size, pad, device, list(range(len(examples)))):
        loss, n, correct, sequences_right = _loss_and_accuracy(model, batch)
        loss_sum, n_tokens, n_correct = loss_sum + loss.item() * n, n_tokens + n, n_correct + correct
        n_sequences_right += sequences_right
    model.train()
    return loss_sum / n_tokens, n_correct / n_tokens, n_sequences_right / len(examples)


def _set_cpu_threads() -> None:
    """Use every core this process may run on, unless the operator pinned a number."""
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def _save_adapter(model: Any, path: Path) -> None:
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)


def train(config: TrainingConfig, callbacks: TrainingCallbacks) -> TrainingResult:
    """Fine-tune a LoRA adapter on ``config.training_file``; see the module docstring."""
    hp = config.hyperparameters
    set_seed(config.seed)
    device = resolve_device(config.device)
    if device.type == "cpu":
        _set_cpu_threads()

    callbacks.on_event(f"Loading base model from {config.base_model_dir} on {device}")
    model, tokenizer = load_base_model(config.base_model_dir, device)
    model.config.use_cache = False
    train_set = _load_examples(config.training_file, tokenizer, config.max_seq_len, "training", callbacks)
    valid_set = None
    if config.validation_file is not None:
        valid_set = _load_examples(config.validation_file, tokenizer, config.max_seq_len, "validation", callbacks)

    lora = config.lora
    targets = _lora_targets(model, lora.target_modules)
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, peft_config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_set) / hp.batch_size)
    total = steps_per_epoch * hp.n_epochs
    warmup = math.ceil(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total))
    pad = pad_id(tokenizer)
    n_trainable = sum(p.numel() for p in params)
    callbacks.on_event(
        f"Training {n_trainable:,} LoRA parameters for {total} steps "
        f"({hp.n_epochs} epochs x {steps_per_epoch} steps, batch size {hp.batch_size}, lr {config.learning_rate:g})",
        data={"total_steps": total, "trainable_parameters": n_trainable, "learning_rate": config.learning_rate},
    )

    rng = random.Random(config.seed)
    step, trained_tokens, metrics = 0, 0, []
    valid_loss = valid_acc = valid_seq_acc = None
    elapsed_examples = 0
    window = _new_window()  # sums since the last metrics event
    for epoch in range(1, hp.n_epochs + 1):
        order = list(range(len(train_set)))
        rng.shuffle(order)
        for batch in _batches(train_set, hp.batch_size, pad, device, order):
            if callbacks.should_stop():
                callbacks.on_event(f"Training stopped at step {step}/{total} on request", data={"step": step})
                return TrainingResult(step, trained_tokens, None, _last(metrics), valid_loss, True, metrics)
            started = time.perf_counter()
            loss, n_labels, correct, sequences_right = _loss_and_accuracy(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            n_tokens = int(batch["attention_mask"].sum())
            trained_tokens += n_tokens
            window["loss_sum"] += loss.item() * n_labels
            window["labels"] += n_labels
            window["correct"] += correct
            window["tokens"] += n_tokens
            window["sequences"] += len(batch["input_ids"])
            window["sequences_right"] += sequences_right
            elapsed_examples += len(batch["input_ids"])
            window["seconds"] += time.perf_counter() - started

            end_of_epoch = step % steps_per_epoch == 0
            if end_of_epoch and valid_set is not None:
                valid_loss, valid_acc, valid_seq_acc = _evaluate(model, valid_set, hp.batch_size, pad, device)
            if step % config.log_every == 0 or end_of_epoch:
                valid = (valid_loss, valid_acc) if end_of_epoch else (None, None)
                metrics.append(_log_step(callbacks, window, step, total, epoch, *valid))
                metrics[-1].update(elapsed_tokens=trained_tokens, elapsed_examples=elapsed_examples,
                                   valid_mean_sequence_accuracy=valid_seq_acc if end_of_epoch else None)
                window = _new_window()
            if end_of_epoch and config.checkpoint_dir is not None:
                path = Path(config.checkpoint_dir) / f"step-{step}"
                _save_adapter(model, path)
                callbacks.on_checkpoint(step, path, metrics[-1])

    _save_adapter(model, Path(config.output_dir))
    callbacks.on_event(f"Training finished: {step} steps, {trained_tokens} trained tokens", data={"step": step})
    return TrainingResult(step, trained_tokens, Path(config.output_dir), _last(metrics), valid_loss, False, metrics)


def _new_window() -> dict:
    return {"loss_sum": 0.0, "labels": 0, "correct": 0, "tokens": 0, "seconds": 0.0, "sequences": 0,
            "sequences_right": 0}


def _log_step(
    callbacks: TrainingCallbacks,
    window: dict,
    step: int,
    total: int,
    epoch: int,
    valid_loss: float | None,
    valid_acc: float | None,
) -> dict:
    """Emit a metrics event summarizing the steps in ``window``; return the metrics row."""
    train_loss = window["loss_sum"] / window["labels"]
    row = {
        "step": step,
        "total_steps": total,
        "epoch": epoch,
        "train_loss": train_loss,
        "train_mean_token_accuracy": window["correct"] / window["labels"],
        "train_mean_sequence_accuracy": window["sequences_right"] / window["sequences"],
        "valid_loss": valid_loss,
        "valid_mean_token_accuracy": valid_acc,
        "tokens_per_second": window["tokens"] / max(window["seconds"], 1e-9),
    }
    message = f"Step {step}/{total}: training loss={train_loss:.4f}"
    if valid_loss is not None:
        message += f", validation loss={valid_loss:.4f}"
    data = {k: v for k, v in row.items() if v is not None}
    callbacks.on_event(message, type="metrics", data=data)
    return row


def _last(metrics: list[dict]) -> float | None:
    return metrics[-1]["train_loss"] if metrics else None
