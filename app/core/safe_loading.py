"""What may be loaded into a process: safetensors weights only, and only model code that ships
with transformers.

- An adapter directory must hold `adapter_model.safetensors` and no pickle-format weights
  (`adapter_model.bin` and friends): PEFT would otherwise fall back to unpickling the `.bin`.
- A base model must hold safetensors weights, no pickle weights, and a config.json whose
  `model_type` transformers knows, with no `auto_map` (which names code inside the model folder,
  run only with trust_remote_code, which this project never sets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnsafeModelError(ValueError):
    """The directory holds something this project will not load; the message says what."""


def _pickles(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
                  and not p.name.startswith("training_args"))


def check_adapter_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(str(path))
    pickles = [n for n in _pickles(path) if n.startswith("adapter_model")]
    if pickles:
        raise UnsafeModelError(f"adapter holds pickle-format weights ({', '.join(pickles)}); only safetensors "
                               "adapters are loaded")
    if not (path / "adapter_model.safetensors").is_file():
        raise UnsafeModelError("adapter has no adapter_model.safetensors")
    return path


def check_base_model_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnsafeModelError(f"model has no readable config.json ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise UnsafeModelError("model config.json is not an object")
    if config.get("auto_map"):
        raise UnsafeModelError("model config names its own code (auto_map); it would need trust_remote_code, "
                               "which this server never sets")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UnsafeModelError(f"model_type {model_type!r} is not one transformers ships code for; it would need "
                               "trust_remote_code, which this server never sets")
    pickles = [n for n in _pickles(path) if n.startswith(("pytorch_model", "model"))]
    if pickles:
        raise UnsafeModelError(f"model holds pickle-format weights ({', '.join(pickles)}); only safetensors are loaded")
    if not any(path.glob("*.safetensors")):
        raise UnsafeModelError("model has no safetensors weights")
    return path


def load_adapter(model: Any, adapter_dir: str | Path, **kwargs: Any):
    """PeftModel.from_pretrained, after check_adapter_dir (so PEFT can only find safetensors)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(check_adapter_dir(adapter_dir)), **kwargs)
