"""The training loop: adapters on a local base model, plain PyTorch, progress via callbacks.

``train(config, callbacks)`` loads the base model, applies the fine-tuning method
(``methods.py``), tokenizes the data, and runs AdamW with warm-up and the configured schedule
on padding-free packed batches (``batching.py``). It reports through ``callbacks``:
``on_event`` for log lines and metrics, ``on_checkpoint`` for each resumable checkpoint
(``checkpoints.py``), and polls ``should_stop`` (cancel: stop, no checkpoint) and
``should_pause`` (write a checkpoint at the current step, then stop) before every optimizer step.

Data order: epoch ``e`` visits the examples in ``random.Random(f"{seed}:{e}")`` shuffled order;
a resumed run continues at the same batch of the same order, with the same RNG states, so its
loss curve is the uninterrupted run's (bit-identical on CPU).
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
from transformers import set_seed

from .batching import batch_loss, make_batch
from .checkpoints import file_sha256, load_checkpoint, prune_checkpoints, restore_rng, save_checkpoint
from .config import TrainingConfig
from .data import IGNORE_INDEX, pad_id, read_jsonl, tokenize_example
from .methods import apply_method
from .preference import dpo_loss, load_pairs, pair_batch, reference_logps, reward_metrics
from .model_loading import atomic_directory, load_base_model, resolve_device

Example = tuple[list[int], list[int]]


class TrainingCallbacks(Protocol):
    """How a run reports progress and learns it was cancelled or paused (the worker implements this).

    Optional: ``on_checkpoint_removed(step, path)``, called when retention deletes a checkpoint.
    """

    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None: ...
    def should_stop(self) -> bool: ...
    def should_pause(self) -> bool: ...
    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None: ...


class NullCallbacks:
    """Callbacks that ignore everything and never stop or pause."""

    def on_event(self, message: str, *, type: str = "message", level: str = "info", data: dict | None = None) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def should_pause(self) -> bool:
        return False

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        pass


@dataclass
class TrainingResult:
    steps: int  # optimizer steps taken (in total, counting those before a resume)
    trained_tokens: int  # tokens of the training examples processed, summed over epochs
    adapter_dir: Path | None  # None when stopped or paused
    train_loss: float | None  # last logged training loss
    valid_loss: float | None  # last validation loss
    stopped: bool
    metrics: list[dict] = field(default_factory=list)  # one row per logged step (since the start)
    paused: bool = False
    checkpoint_dir: Path | None = None  # the pause checkpoint, to resume from
    early_stopped: bool = False  # early stopping ended the run (the best weights were restored)


def _load_examples(path: Path, tokenizer: Any, max_len: int, name: str, callbacks: TrainingCallbacks) -> list[Example]:
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


def _lr_factor(step: int, warmup: int, total: int, kind: str = "linear") -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay (to 1/(total-warmup) at the last
    step), cosine decay (same end point), or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    remaining = (total - step) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 - math.cos(math.pi * remaining))
    return remaining


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def _set_cpu_threads() -> None:
    """Use every core this process may run on, unless the operator pinned a number."""
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


class _Run:
    """One training run's moving parts; ``train`` drives it."""

    def __init__(self, config: TrainingConfig, callbacks: TrainingCallbacks) -> None:
        self.config, self.callbacks = config, callbacks
        hp = config.hyperparameters
        set_seed(config.seed)
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            _set_cpu_threads()
        callbacks.on_event(f"Loading base model from {config.base_model_dir} on {self.device}")
        model, tokenizer = load_base_model(config.base_model_dir, self.device, config.lora.quantization)
        model.config.use_cache = False
        self.pad = pad_id(tokenizer)
        load = self._load_pairs if self.dpo else _load_examples
        self.train_set = load(config.training_file, tokenizer, config.max_seq_len, "training", callbacks)
        self.valid_set = None
        if config.validation_file is not None:
            self.valid_set = load(config.validation_file, tokenizer, config.max_seq_len, "validation", callbacks)
        self.model = apply_method(model, config)
        if self.dpo:  # the reference: the base model, before any step (adapter disabled)
            self.train_set = self._with_reference(self.train_set)
            self.valid_set = self._with_reference(self.valid_set) if self.valid_set is not None else None
            callbacks.on_event(f"Computed the reference model's log-probabilities of {len(self.train_set)} training "
                               f"pairs (DPO, beta {config.dpo_beta:g})", data={"beta": config.dpo_beta})
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_set) / hp.batch_size)
        self.total = self.steps_per_epoch * hp.n_epochs
        warmup = math.ceil(config.warmup_ratio * self.total)
        kind, total = config.lr_scheduler, self.total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _lr_factor(s, warmup, total, kind))
        self.fingerprint = {
            "training_file_sha256": file_sha256(config.training_file),
            "n_examples": len(self.train_set),
            "batch_size": hp.batch_size,
            "n_epochs": hp.n_epochs,
            "seed": config.seed,
        }
        self.state: dict = {
            "step": 0, "epoch": 1, "batch_in_epoch": 0, "trained_tokens": 0, "metrics": [],
            "window": _new_window(), "valid_loss": None, "valid_acc": None,
            "best_valid": None, "best_valid_step": None, "evals_since_best": 0,
            "best_checkpoint": None, "fingerprint": self.fingerprint,
        }
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.last_checkpoint_step: int | None = None
        n_trainable = sum(p.numel() for p in self.params)
        callbacks.on_event(
            f"Training {n_trainable:,} parameters for {self.total} steps ({hp.n_epochs} epochs x "
            f"{self.steps_per_epoch} steps, batch size {hp.batch_size}, lr {config.learning_rate:g})",
            data={"total_steps": self.total, "trainable_parameters": n_trainable, "learning_rate": config.learning_rate},
        )

    # -- preference pairs (DPO) ----------------------------------------------------------------
    @property
    def dpo(self) -> bool:
        return self.config.method == "dpo"

    @staticmethod
    def _load_pairs(path: Path, tokenizer: Any, max_len: int, name: str, callbacks: TrainingCallbacks) -> list:
        return load_pairs(path, tokenizer, max_len, name, callbacks.on_event)

    def _with_reference(self, pairs: list) -> list:
        bs = self.config.hyperparameters.batch_size
        refs = reference_logps(self.model, pairs, self.pad, self.device, bs)
        return [(chosen, rejected, *ref) for (chosen, rejected), ref in zip(pairs, refs)]

    def _pair_loss(self, pairs: list, stats: dict | None) -> tuple[torch.Tensor, int]:
        """(summed DPO loss of ``pairs``, their tokens)."""
        batch = pair_batch(pairs, self.pad)
        reference = torch.tensor([[p[2], p[3]] for p in pairs], dtype=torch.float32, device=self.device)
        with self._autocast():
            loss = dpo_loss(self.model, self._to_device(batch), reference, self.config.dpo_beta, stats)
        return loss, int(batch["n_tokens"])

    # -- checkpoints -------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        state, best = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"checkpoint {path} belongs to a different run: {state['fingerprint']} != {self.fingerprint}")
        restore_rng(path, state)
        del state["python_random"]
        self.state = state
        self.best_weights = best
        self.callbacks.on_event(f"Resumed from checkpoint at step {state['step']}", data={"step": state["step"]})

    def checkpoint(self, metrics: dict, reuse_existing: bool = False) -> Path:
        """Write a resumable checkpoint of the current step (``on_checkpoint`` once per step: a pause
        right after a checkpoint at the same step reuses it), then apply retention."""
        config, step = self.config, self.state["step"]
        path = Path(config.checkpoint_dir) / f"step-{step}"
        if reuse_existing and self.last_checkpoint_step == step and path.is_dir():
            return path
        self.last_checkpoint_step = step
        score = metrics.get("valid_loss")
        score = metrics.get("train_loss") if score is None else score
        best = self.state["best_checkpoint"]
        if score is not None and (best is None or score < best["score"] or best["step"] == step):
            self.state["best_checkpoint"] = {"step": step, "score": score}
        keep_best = self.best_weights if config.early_stopping_patience else None
        save_checkpoint(path, self.model, self.optimizer, self.scheduler, self.state, keep_best)
        self.callbacks.on_checkpoint(step, path, metrics)
        best_step = self.state["best_checkpoint"]["step"] if self.state["best_checkpoint"] else None
        for removed_step, removed in prune_checkpoints(Path(config.checkpoint_dir), config.keep_checkpoints, best_step):
            hook = getattr(self.callbacks, "on_checkpoint_removed", None)
            if hook is not None:
                hook(removed_step, removed)
        return path

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float | None]:
        """Loss on learned tokens (token-weighted mean) and token accuracy over the validation set;
        DPO: the mean DPO loss per pair (the reward statistics go to ``state["valid_rewards"]``)."""
        self.model.eval()
        if self.dpo:
            stats: dict = {}
            bs = self.config.hyperparameters.batch_size
            loss_sum = sum(self._pair_loss(self.valid_set[i : i + bs], stats)[0].item()
                           for i in range(0, len(self.valid_set), bs))
            self.model.train()
            self.state["valid_rewards"] = reward_metrics(stats, "valid")
            return loss_sum / len(self.valid_set), None
        loss_sum, n_tokens, n_correct, sequences = 0.0, 0, 0, {}
        bs = self.config.hyperparameters.batch_size
        for start in range(0, len(self.valid_set), bs):
            batch = self._to_device(self._batch(self.valid_set[start : start + bs], 0.0))
            with self._autocast():
                loss, _, n, correct = batch_loss(self.model, batch, sequences)
            loss_sum, n_tokens, n_correct = loss_sum + loss.item(), n_tokens + n, n_correct + correct
        self.model.train()
        self.state["valid_sequence_accuracy"] = sequences.get("sequences_right", 0) / max(1, sequences.get("sequences", 0))
        return loss_sum / n_tokens, n_correct / n_tokens

    def after_evaluation(self, valid_loss: float) -> bool:
        """Track the best validation loss; True when early stopping says stop."""
        state = self.state
        if state["best_valid"] is None or valid_loss < state["best_valid"]:
            state["best_valid"], state["best_valid_step"], state["evals_since_best"] = valid_loss, state["step"], 0
            if self.config.early_stopping_patience:
                self.best_weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            return False
        state["evals_since_best"] += 1
        patience = self.config.early_stopping_patience
        return patience is not None and state["evals_since_best"] >= patience

    def restore_best(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in (self.best_weights or {}).items():
                params[name].copy_(value)

    # -- one optimizer step ------------------------------------------------------------------
    @property
    def _packed(self) -> bool:
        return self.config.batching == "packed"

    def _batch(self, examples: list[Example], prompt_loss_weight: float) -> dict:
        """Packed rows no wider than the longest example: never more tokens than padding would use, and
        no masked attention over rows much wider than one example (its cost grows with the row squared)."""
        width = max(len(ids) for ids, _ in examples)
        return make_batch(examples, self.pad, packed=self._packed, row_tokens=width, prompt_loss_weight=prompt_loss_weight)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return torch.autocast("cpu", enabled=False)

    def step(self, examples: list[Example]) -> None:
        config, window = self.config, self.state["window"]
        started = time.perf_counter()
        accumulation = min(config.gradient_accumulation_steps, len(examples))
        size = math.ceil(len(examples) / accumulation)
        if self.dpo:
            self._dpo_step([examples[i : i + size] for i in range(0, len(examples), size)], len(examples), started)
            return
        batches = [self._batch(examples[i : i + size], config.prompt_loss_weight) for i in range(0, len(examples), size)]
        denominator = sum(float(b["weights"].sum()) for b in batches)
        loss_sum = 0.0
        for batch in batches:
            with self._autocast():
                loss, _, n_learned, correct = batch_loss(self.model, self._to_device(batch), window)
            (loss / denominator).backward()
            loss_sum += loss.item()
            window["labels"] += n_learned
            window["correct"] += correct
            window["tokens"] += int(batch["n_tokens"])
            self.state["trained_tokens"] += int(batch["n_tokens"])
        self._optimizer_step(len(examples), loss_sum, denominator, started)

    def _dpo_step(self, chunks: list[list], n_pairs: int, started: float) -> None:
        """One optimizer step on preference pairs: the mean DPO loss over the step's pairs."""
        window, loss_sum = self.state["window"], 0.0
        for chunk in chunks:
            loss, n_tokens = self._pair_loss(chunk, window)
            (loss / n_pairs).backward()
            loss_sum += loss.item()
            window["tokens"] += n_tokens
            self.state["trained_tokens"] += n_tokens
        self._optimizer_step(n_pairs, loss_sum, float(n_pairs), started)

    def _optimizer_step(self, n_examples: int, loss_sum: float, denominator: float, started: float) -> None:
        window = self.state["window"]
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        window["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        self.state["elapsed_examples"] = self.state.get("elapsed_examples", 0) + n_examples
        window["loss_sum"] += loss_sum
        window["weight"] += denominator
        window["seconds"] += time.perf_counter() - started


def train(config: TrainingConfig, callbacks: TrainingCallbacks) -> TrainingResult:
    """Fine-tune on ``config.training_file``; see the module docstring."""
    run = _Run(config, callbacks)
    if config.resume_from is not None:
        run.resume(config.resume_from)
    state, hp = run.state, config.hyperparameters
    total, per_epoch = run.total, run.steps_per_epoch
    should_pause = getattr(callbacks, "should_pause", lambda: False)

    def result(adapter_dir=None, stopped=False, paused=False, checkpoint_dir=None, early=False) -> TrainingResult:
        rows = state["metrics"]
        return TrainingResult(state["step"], state["trained_tokens"], adapter_dir, _last(rows), state["valid_loss"],
                              stopped, rows, paused, checkpoint_dir, early)

    while state["epoch"] <= hp.n_epochs:
        epoch = state["epoch"]
        order = epoch_order(config.seed, epoch, len(run.train_set))
        while state["epoch"] == epoch and state["batch_in_epoch"] < per_epoch:
            step = state["step"]
            if callbacks.should_stop():
                callbacks.on_event(f"Training stopped at step {step}/{total} on request", data={"step": step})
                return result(stopped=True)
            if should_pause():
                if config.checkpoint_dir is None:
                    raise ValueError("pausing needs a checkpoint_dir")
                path = run.checkpoint(_pause_metrics(state), reuse_existing=True)
                callbacks.on_event(f"Training paused at step {step}/{total}", data={"step": step})
                return result(stopped=True, paused=True, checkpoint_dir=path)
            b = state["batch_in_epoch"]
            run.step([run.train_set[i] for i in order[b * hp.batch_size : (b + 1) * hp.batch_size]])
            state["batch_in_epoch"] = b + 1
            step = state["step"]

            end_of_epoch = state["batch_in_epoch"] == per_epoch
            checkpoint_now = config.checkpoint_dir is not None and (
                end_of_epoch or (config.checkpoint_every is not None and step % config.checkpoint_every == 0))
            evaluate_now = run.valid_set is not None and (
                end_of_epoch or (config.eval_every is not None and step % config.eval_every == 0))
            stop_early = False
            if evaluate_now:
                state["valid_loss"], state["valid_acc"] = run.evaluate()
                stop_early = run.after_evaluation(state["valid_loss"])
            if step % config.log_every == 0 or end_of_epoch or checkpoint_now or evaluate_now or stop_early:
                valid = (state["valid_loss"], state["valid_acc"]) if evaluate_now else (None, None)
                rewards = {}  # DPO: reward accuracy and margin, of these steps and of the validation
                if run.dpo:
                    rewards = reward_metrics(state["window"], "train") | (state["valid_rewards"] if evaluate_now else {})
                state["metrics"].append(_log_step(callbacks, state["window"], step, total, epoch, *valid, rewards))
                state["metrics"][-1].update(  # the legacy results' columns
                    elapsed_tokens=state["trained_tokens"], elapsed_examples=state.get("elapsed_examples", 0),
                    valid_mean_sequence_accuracy=state.get("valid_sequence_accuracy") if evaluate_now else None)
                state["window"] = _new_window()
            if end_of_epoch:
                state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            if checkpoint_now:
                run.checkpoint(state["metrics"][-1])
            if stop_early:
                run.restore_best()
                callbacks.on_event(
                    f"Early stopping at step {step}: no validation improvement in {config.early_stopping_patience} "
                    f"evaluations; restored the weights of step {state['best_valid_step']} "
                    f"(validation loss {state['best_valid']:.4f})",
                    data={"step": step, "best_step": state["best_valid_step"], "best_valid_loss": state["best_valid"]})
                _save_adapter(run.model, Path(config.output_dir))
                return result(adapter_dir=Path(config.output_dir), early=True)

    _save_adapter(run.model, Path(config.output_dir))
    callbacks.on_event(f"Training finished: {state['step']} steps, {state['trained_tokens']} trained tokens",
                       data={"step": state["step"]})
    return result(adapter_dir=Path(config.output_dir))


def _save_adapter(model: Any, path: Path) -> None:
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)


def _new_window() -> dict:
    return {"loss_sum": 0.0, "weight": 0.0, "labels": 0, "correct": 0, "tokens": 0, "seconds": 0.0, "learning_rate": None}


def _pause_metrics(state: dict) -> dict:
    """Metrics for a pause checkpoint: the steps since the last logged row, else that row."""
    window = state["window"]
    if window["weight"] > 0:
        return {"step": state["step"], "train_loss": window["loss_sum"] / window["weight"],
                "train_mean_token_accuracy": window["correct"] / window["labels"] if window["labels"] else None,
                **reward_metrics(window, "train")}
    last = dict(state["metrics"][-1]) if state["metrics"] else {}
    return last | {"step": state["step"]}


def _log_step(
    callbacks: TrainingCallbacks,
    window: dict,
    step: int,
    total: int,
    epoch: int,
    valid_loss: float | None,
    valid_acc: float | None,
    extra: dict | None = None,
) -> dict:
    """Emit a metrics event summarizing the steps in ``window``; return the metrics row. Token accuracies
    are None where no token was learned (DPO, whose ``extra`` has the reward metrics instead)."""
    train_loss = window["loss_sum"] / window["weight"]
    tokens = window["labels"] > 0
    row = {
        "step": step,
        "total_steps": total,
        "epoch": epoch,
        "train_loss": train_loss,
        "train_mean_token_accuracy": window["correct"] / window["labels"] if tokens else None,
        "train_mean_sequence_accuracy": window.get("sequences_right", 0) / max(1, window.get("sequences", 0))
        if tokens else None,
        "valid_loss": valid_loss,
        "valid_mean_token_accuracy": valid_acc,
        "learning_rate": window.get("learning_rate"),
        "tokens_per_second": window["tokens"] / max(window["seconds"], 1e-9),
        **(extra or {}),
    }
    message = f"Step {step}/{total}: training loss={train_loss:.4f}"
    if valid_loss is not None:
        message += f", validation loss={valid_loss:.4f}"
    data = {k: v for k, v in row.items() if v is not None}
    callbacks.on_event(message, type="metrics", data=data)
    return row


def _last(metrics: list[dict]) -> float | None:
    return metrics[-1]["train_loss"] if metrics else None
