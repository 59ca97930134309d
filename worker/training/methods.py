"""Fine-tuning methods: which parameters train, and how (LoRA adapters via PEFT)."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from .config import TrainingConfig

LLAMA_LIKE_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_targets(model: Any, configured: list[str] | None) -> list[str] | str:
    """Configured names, else every attention and MLP projection of Llama-like models, else all linear layers."""
    if configured is not None:
        return configured
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return LLAMA_LIKE_MODULES if set(LLAMA_LIKE_MODULES) <= names else "all-linear"


def apply_method(model: Any, config: TrainingConfig) -> Any:
    """Wrap ``model`` with a LoRA (or DoRA) adapter shaped by ``config.lora``; only the adapter trains.

    ``train_top_k_layers=K`` puts adapters on the last K transformer layers only: the first
    ``n_layers - K`` stay frozen (classic transfer-learning advice: adapt the top, keep the bottom).
    ``freeze_first_n_layers=N`` says the same from below: no adapters on layers ``0..N-1``.
    ``full_finetune_layers`` trains those layers' own weights in full (PEFT ``modules_to_save``: a
    trainable copy saved with the adapter); the other layers get LoRA adapters.
    """
    lora = config.lora
    if lora.quantization != "none":  # QLoRA: frozen quantized base, float norms/embeddings, LoRA on top
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    n_layers = model.config.num_hidden_layers
    layers = None
    if lora.train_top_k_layers is not None:
        if lora.train_top_k_layers > n_layers:
            raise ValueError(f"train_top_k_layers={lora.train_top_k_layers} but the model has {n_layers} layers")
        layers = list(range(n_layers - lora.train_top_k_layers, n_layers))
    if lora.freeze_first_n_layers is not None:
        if lora.freeze_first_n_layers >= n_layers:
            raise ValueError(f"freeze_first_n_layers={lora.freeze_first_n_layers} but the model has {n_layers} layers: "
                             f"at most {n_layers - 1} can be frozen")
        layers = list(range(lora.freeze_first_n_layers, n_layers))
    full = sorted(set(lora.full_finetune_layers or []))
    if full and full[-1] >= n_layers:
        raise ValueError(f"full_finetune_layers names layer {full[-1]} but the model has {n_layers} (0-{n_layers - 1})")
    if full:
        layers = [i for i in (layers if layers is not None else range(n_layers)) if i not in full]
        if not layers:  # every adapted layer trains in full: keep a token adapter PEFT requires off the path
            raise ValueError("full_finetune_layers covers every layer that would get an adapter")
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_dora=lora.use_dora,
        target_modules=lora_targets(model, lora.target_modules), task_type="CAUSAL_LM",
        layers_to_transform=layers, layers_pattern="layers" if layers is not None else None,
        modules_to_save=[f"layers.{i}" for i in full] or None,
    )
    return get_peft_model(model, peft_config)
