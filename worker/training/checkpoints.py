"""Resumable checkpoints: a servable PEFT adapter with the training state beside it.

A checkpoint directory ``<checkpoint_dir>/step-<N>`` holds

* ``adapter_config.json``, ``adapter_model.safetensors`` — the adapter, servable as is;
* ``training_state/optimizer.pt``, ``scheduler.pt`` — ``state_dict()`` of each (``torch.save``,
  loaded back with ``weights_only=True``);
* ``training_state/rng.pt`` — torch CPU (and CUDA) generator states;
* ``training_state/trainer_state.json`` — step, epoch, batches done in the epoch and that epoch's
  example order, the metrics so far, the unlogged metrics window, best-so-far and early-stopping
  counters, the python ``random`` state, and a fingerprint of the run (training file hash,
  hyper-parameters) that a resume must match;
* ``training_state/best_trainable.safetensors`` — the best weights so far, when early stopping
  restores them at the end.

Written atomically (a temporary directory renamed into place). Retention: the last
``keep`` checkpoints by step, plus the best one (lowest validation loss, else training loss).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .model_loading import atomic_directory

STATE_DIR = "training_state"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict,
    best_weights: dict[str, torch.Tensor] | None = None,
) -> None:
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        state_dir = tmp / STATE_DIR
        state_dir.mkdir()
        torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
        torch.save(scheduler.state_dict(), state_dir / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, state_dir / "rng.pt")
        if best_weights is not None:
            save_file({k: v.contiguous() for k, v in best_weights.items()}, str(state_dir / "best_trainable.safetensors"))
        full = dict(state, python_random=_jsonable(random.getstate()))
        (state_dir / "trainer_state.json").write_text(json.dumps(full, indent=1), encoding="utf-8")


def is_resumable(path: Path) -> bool:
    return (path / "adapter_model.safetensors").is_file() and (path / STATE_DIR / "trainer_state.json").is_file()


def load_checkpoint(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Restore weights, optimizer, scheduler; return (trainer state, best weights or None).

    The RNG states are restored last, by ``restore_rng``, right before training continues.
    """
    from peft import set_peft_model_state_dict

    path = Path(path)
    if not is_resumable(path):
        raise ValueError(f"{path} is not a resumable checkpoint (no adapter or {STATE_DIR}/trainer_state.json)")
    state_dir = path / STATE_DIR
    state = json.loads((state_dir / "trainer_state.json").read_text(encoding="utf-8"))
    adapter = load_file(str(path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"checkpoint {path} does not match the model: unexpected {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    best_file = state_dir / "best_trainable.safetensors"
    best = load_file(str(best_file)) if best_file.is_file() else None
    return state, best


def restore_rng(path: Path, state: dict) -> None:
    rng = torch.load(Path(path) / STATE_DIR / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = state["python_random"]
    random.setstate((version, tuple(internal), gauss))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def checkpoint_steps(checkpoint_dir: Path) -> list[int]:
    if not checkpoint_dir.is_dir():
        return []
    steps = []
    for child in checkpoint_dir.iterdir():
        if child.is_dir() and child.name.startswith("step-") and child.name[5:].isdigit():
            steps.append(int(child.name[5:]))
    return sorted(steps)


def prune_checkpoints(checkpoint_dir: Path, keep: int, best_step: int | None) -> list[tuple[int, Path]]:
    """Delete all but the last ``keep`` checkpoints and the best one; return what was removed."""
    steps = checkpoint_steps(checkpoint_dir)
    kept = set(steps[-keep:]) | ({best_step} if best_step is not None else set())
    removed = []
    for step in steps:
        if step not in kept:
            path = checkpoint_dir / f"step-{step}"
            shutil.rmtree(path, ignore_errors=True)
            removed.append((step, path))
    return removed
