"""How a training run talks to its driver: progress callbacks in, a result out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


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
