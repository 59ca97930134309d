"""The training loop: adapters on a local base model, plain PyTorch, progress via callbacks.

``train(config, callbacks)`` sets up a ``Run`` (``run.py``: the base model, the fine-tuning method
of ``methods.py``, the tokenized data, AdamW with warm-up and the configured schedule) and steps it
on padding-free packed batches (``batching.py``), or on preference pairs for DPO
(``preference.py``), logging metrics rows (``metrics.py``). It reports through ``callbacks``:
``on_event`` for log lines and metrics, ``on_checkpoint`` for each resumable checkpoint
(``checkpoints.py``), and polls ``should_stop`` (cancel: stop, no checkpoint) and
``should_pause`` (write a checkpoint at the current step, then stop) before every optimizer step.

Data order: epoch ``e`` visits the examples in ``random.Random(f"{seed}:{e}")`` shuffled order;
a resumed run continues at the same batch of the same order, with the same RNG states, so its
loss curve is the uninterrupted run's (bit-identical on CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .callbacks import NullCallbacks, TrainingCallbacks, TrainingResult
from .config import TrainingConfig
from .metrics import last_loss, log_step, new_window, pause_metrics
from .model_loading import atomic_directory
from .preference import reward_metrics
from .run import Run
from .schedule import epoch_order

__all__ = ["NullCallbacks", "TrainingCallbacks", "TrainingResult", "train"]


def train(config: TrainingConfig, callbacks: TrainingCallbacks) -> TrainingResult:
    """Fine-tune on ``config.training_file``; see the module docstring."""
    run = Run(config, callbacks)
    if config.resume_from is not None:
        run.resume(config.resume_from)
    state, hp = run.state, config.hyperparameters
    total, per_epoch = run.total, run.steps_per_epoch
    should_pause = getattr(callbacks, "should_pause", lambda: False)

    def result(adapter_dir=None, stopped=False, paused=False, checkpoint_dir=None, early=False) -> TrainingResult:
        rows = state["metrics"]
        return TrainingResult(state["step"], state["trained_tokens"], adapter_dir, last_loss(rows), state["valid_loss"],
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
                path = run.checkpoint(pause_metrics(state), reuse_existing=True)
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
                state["metrics"].append(log_step(callbacks, state["window"], step, total, epoch, *valid, rewards))
                state["metrics"][-1].update(  # the legacy results' columns
                    elapsed_tokens=state["trained_tokens"], elapsed_examples=state.get("elapsed_examples", 0),
                    valid_mean_sequence_accuracy=state.get("valid_sequence_accuracy") if evaluate_now else None)
                state["window"] = new_window()
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
