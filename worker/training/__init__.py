"""LoRA fine-tuning with PEFT (supervised, or DPO on preference pairs): configuration, data, model
files and the training loop.

No database or Celery here; ``worker.tasks`` drives ``train`` through ``TrainingCallbacks``.
"""

from .config import (
    DEFAULT_BASE_LEARNING_RATE,
    Hyperparameters,
    LoraSettings,
    TrainingConfig,
    resolve_hyperparameters,
)
from .batching import batch_loss, make_batch, pack_rows
from .data import IGNORE_INDEX, TokenizedExample, detect_format, read_jsonl, tokenize_example
from .loop import NullCallbacks, TrainingCallbacks, TrainingResult, train
from .model_loading import build_tiny_llama, import_gguf, load_base_model, smollm2_gguf_path

__all__ = [
    "DEFAULT_BASE_LEARNING_RATE",
    "IGNORE_INDEX",
    "Hyperparameters",
    "LoraSettings",
    "NullCallbacks",
    "TokenizedExample",
    "TrainingCallbacks",
    "TrainingConfig",
    "TrainingResult",
    "build_tiny_llama",
    "batch_loss",
    "make_batch",
    "pack_rows",
    "detect_format",
    "import_gguf",
    "load_base_model",
    "read_jsonl",
    "resolve_hyperparameters",
    "smollm2_gguf_path",
    "tokenize_example",
    "train",
]
