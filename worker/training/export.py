"""Export a fine-tuned model: the base model with a LoRA/DoRA adapter merged in, as safetensors."""

from __future__ import annotations

from pathlib import Path

from .model_loading import atomic_directory, load_base_model


def merge_adapter(base_model_dir: Path, adapter_dir: Path, dest_dir: Path) -> Path:
    """Write ``base + adapter`` (merged weights, float32, with the tokenizer) to ``dest_dir`` atomically."""
    from app.core.safe_loading import load_adapter

    model, tokenizer = load_base_model(base_model_dir, "cpu")
    merged = load_adapter(model, adapter_dir).merge_and_unload()
    with atomic_directory(dest_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(dest_dir)
