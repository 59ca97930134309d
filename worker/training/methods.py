"""Fine-tuning methods: which parameters train, and how (LoRA adapters via PEFT)."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from .config import TrainingConfig

LLAMA_LIKE_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_targets(model: Any, configured: list[str] | None) -> list[str] | str:
    """Configured names, else every attention and MLP projection of Llama-like models, else all linear layers."""
    if configured is not None:
        return configured
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return LLAMA_LIKE_MODULES if set(LLAMA_LIKE_MODULES) <= names else "all-linear"


def apply_method(model: Any, config: TrainingConfig) -> Any:
    """Wrap ``model`` with a LoRA adapter shaped by ``config.lora``; only the adapter trains."""
    lora = config.lora
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)
