"""Training metrics: the window of steps since the last logged row, and the rows themselves."""

from __future__ import annotations

from .callbacks import TrainingCallbacks
from .preference import reward_metrics


def new_window() -> dict:
    return {"loss_sum": 0.0, "weight": 0.0, "labels": 0, "correct": 0, "tokens": 0, "seconds": 0.0, "learning_rate": None}


def pause_metrics(state: dict) -> dict:
    """Metrics for a pause checkpoint: the steps since the last logged row, else that row."""
    window = state["window"]
    if window["weight"] > 0:
        return {"step": state["step"], "train_loss": window["loss_sum"] / window["weight"],
                "train_mean_token_accuracy": window["correct"] / window["labels"] if window["labels"] else None,
                **reward_metrics(window, "train")}
    last = dict(state["metrics"][-1]) if state["metrics"] else {}
    return last | {"step": state["step"]}


def log_step(
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


def last_loss(metrics: list[dict]) -> float | None:
    return metrics[-1]["train_loss"] if metrics else None
