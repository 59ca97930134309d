"""QLoRA and DoRA on the real SmolLM2-135M-Instruct: short runs (6 examples, 6 steps, 96 tokens)
whose loss falls and whose adapter loads on the base it was trained on and answers."""

from __future__ import annotations

import json

import pytest
import torch

from worker.training import Hyperparameters, LoraSettings, NullCallbacks, TrainingConfig, load_base_model, train

from .test_smollm2 import greedy_answers
from .toy_data import HELD_OUT_QUESTIONS, pirate_chat_examples, write_jsonl


def short_run(smollm2_dir, tmp_path, lora: LoraSettings):
    config = TrainingConfig(
        base_model_dir=smollm2_dir, training_file=write_jsonl(tmp_path / "train.jsonl", pirate_chat_examples(6, seed=3)),
        output_dir=tmp_path / "adapter", lora=lora, max_seq_len=96, log_every=1,
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=2, learning_rate_multiplier=2.0),
    )
    result = train(config, NullCallbacks())
    losses = [row["train_loss"] for row in result.metrics]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses  # the loss falls
    return result


def answers_with_adapter(smollm2_dir, adapter_dir):
    from peft import PeftModel

    model, tokenizer = load_base_model(smollm2_dir, "cpu")
    tuned = PeftModel.from_pretrained(model, adapter_dir).eval()
    return model, greedy_answers(tuned, tokenizer, HELD_OUT_QUESTIONS[:1])


@pytest.mark.slow
def test_qlora_on_smollm2_trains_on_a_4bit_base_and_answers(smollm2_dir, tmp_path):
    import bitsandbytes as bnb

    from peft import PeftModel

    result = short_run(smollm2_dir, tmp_path, LoraSettings(quantization="nf4", r=8, alpha=16))
    model, tokenizer = load_base_model(smollm2_dir, "cpu", "nf4")
    # Looked at before any forward: on CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for
    # its bf16 kernel at the first inference forward, which undoes the double quantization.
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_state.quant_type == "nf4"
    assert q_proj.weight.quant_state.nested  # double quantization
    [answer] = greedy_answers(PeftModel.from_pretrained(model, result.adapter_dir).eval(), tokenizer,
                              HELD_OUT_QUESTIONS[:1])
    assert answer.strip(), answer


@pytest.mark.slow
def test_dora_on_smollm2_learns_magnitudes_and_answers(smollm2_dir, tmp_path):
    from safetensors.torch import load_file

    result = short_run(smollm2_dir, tmp_path, LoraSettings(use_dora=True, r=8, alpha=16))
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    magnitudes = [t for k, t in weights.items() if "lora_magnitude_vector" in k]
    assert magnitudes and all(torch.isfinite(t).all() for t in magnitudes)
    base, [answer] = answers_with_adapter(smollm2_dir, result.adapter_dir)
    assert answer.strip(), answer
    # the magnitudes start as the base weights' row norms; training moved them
    [trained] = [t for k, t in weights.items() if "layers.0.self_attn.q_proj.lora_magnitude_vector" in k]
    initial = torch.linalg.norm(base.model.layers[0].self_attn.q_proj.base_layer.weight.detach(), dim=1)
    assert trained.shape == initial.shape and not torch.allclose(trained, initial, atol=1e-5)
