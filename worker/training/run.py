"""One training run's moving parts: model and data set up, optimizer steps, evaluation, checkpoints.

``Run`` loads the base model, applies the fine-tuning method (``methods.py``), tokenizes the data
(supervised examples, or preference pairs with their reference log-probabilities for DPO:
``preference.py``) and builds AdamW with warm-up and the configured schedule (``schedule.py``).
``loop.train`` drives it step by step.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from .batching import batch_loss, make_batch
from .callbacks import TrainingCallbacks
from .checkpoints import file_sha256, load_checkpoint, prune_checkpoints, restore_rng, save_checkpoint
from .config import TrainingConfig
from .data import load_examples, pad_id
from .lora_dropout import use_fast_dropout
from .methods import apply_method
from .metrics import new_window
from .model_loading import load_base_model, resolve_device
from .preference import dpo_loss, load_pairs, pair_batch, reference_logps, reward_metrics
from .schedule import lr_factor
from .segment_attention import use_segment_attention

Example = tuple[list[int], list[int]]


def set_cpu_threads() -> None:
    """Use every core this process may run on, unless the operator pinned a number."""
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


class Run:
    """One training run's moving parts; ``train`` drives it."""

    def __init__(self, config: TrainingConfig, callbacks: TrainingCallbacks) -> None:
        self.config, self.callbacks = config, callbacks
        hp = config.hyperparameters
        set_seed(config.seed)
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            set_cpu_threads()
        callbacks.on_event(f"Loading base model from {config.base_model_dir} on {self.device}")
        model, tokenizer = load_base_model(config.base_model_dir, self.device, config.lora.quantization)
        model.config.use_cache = False
        self.pad = pad_id(tokenizer)
        load = self._load_pairs if self.dpo else load_examples
        self.train_set = load(config.training_file, tokenizer, config.max_seq_len, "training", callbacks)
        self.valid_set = None
        if config.validation_file is not None:
            self.valid_set = load(config.validation_file, tokenizer, config.max_seq_len, "validation", callbacks)
        # packed: every example of a batch in one row, attention within each example (segment_attention)
        self.segmented = self._packed and use_segment_attention(model)
        self.model = apply_method(model, config)
        use_fast_dropout(self.model)
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, warmup, total, kind))
        self.fingerprint = {
            "training_file_sha256": file_sha256(config.training_file),
            "n_examples": len(self.train_set),
            "batch_size": hp.batch_size,
            "n_epochs": hp.n_epochs,
            "seed": config.seed,
        }
        self.state: dict = {
            "step": 0, "epoch": 1, "batch_in_epoch": 0, "trained_tokens": 0, "metrics": [],
            "window": new_window(), "valid_loss": None, "valid_acc": None,
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
        """One row of segments where the model takes segment attention; else packed rows no wider than the
        longest example: never more tokens than padding would use, and no masked attention over rows much
        wider than one example (its cost grows with the row squared)."""
        width = max(len(ids) for ids, _ in examples)
        return make_batch(examples, self.pad, packed=self._packed, row_tokens=width, prompt_loss_weight=prompt_loss_weight,
                          segments=self.segmented)

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
