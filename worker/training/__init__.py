"""LoRA fine-tuning with PEFT (supervised, or DPO on preference pairs): configuration, data, model
files and the training loop.

No database or Celery here; ``worker.tasks`` drives ``train`` through ``TrainingCallbacks``.

The names below are imported on first use, so a light submodule (``validation``, the upload
check) can be imported without torch and PEFT (the upload check's own process needs only it).
"""

from __future__ import annotations

import importlib

_HOMES = {
    "config": ("DEFAULT_BASE_LEARNING_RATE", "Hyperparameters", "LoraSettings", "TrainingConfig",
               "resolve_hyperparameters"),
    "batching": ("batch_loss", "make_batch", "pack_rows"),
    "data": ("IGNORE_INDEX", "TokenizedExample", "detect_format", "read_jsonl", "tokenize_example"),
    "loop": ("NullCallbacks", "TrainingCallbacks", "TrainingResult", "train"),
    "model_loading": ("build_tiny_llama", "import_gguf", "load_base_model", "smollm2_gguf_path"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> object:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
