"""Each training knob changes what a user observes (so a knob that did nothing fails its test)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import worker.training.run as run_module
from worker.training import Hyperparameters, LoraSettings, train
from worker.training.config import training_options

from .test_loop import Recorder, make_config

HP = Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=5.0)


def run(tmp_path, tiny_model_dir, name, **overrides):
    (tmp_path / name).mkdir()
    values = dict(hyperparameters=HP, log_every=1, checkpoint_dir=None, validation_file=None) | overrides
    config = make_config(tmp_path / name, tiny_model_dir, **values)
    recorder = Recorder()
    return config, recorder, train(config, recorder)


def adapter(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def lrs(result) -> list[float]:
    return [row["learning_rate"] for row in result.metrics]


def test_warmup_and_schedulers_shape_the_learning_rate(tiny_model_dir, tmp_path):
    peak = 5.0e-3
    _, _, linear = run(tmp_path, tiny_model_dir, "linear", warmup_ratio=0.5)
    assert lrs(linear) == pytest.approx([peak / 2, peak, peak, peak / 2])  # 2 warm-up steps of 4, then linear decay
    _, _, short = run(tmp_path, tiny_model_dir, "short", warmup_ratio=0.25)
    assert lrs(short) == pytest.approx([peak, peak, peak * 2 / 3, peak / 3])
    _, _, cosine = run(tmp_path, tiny_model_dir, "cosine", warmup_ratio=0.25, lr_scheduler="cosine")
    assert lrs(cosine) == pytest.approx([peak, peak, peak * 0.5 * (1 - math.cos(math.pi * 2 / 3)), peak * 0.25])
    _, _, constant = run(tmp_path, tiny_model_dir, "constant", warmup_ratio=0.0, lr_scheduler="constant")
    assert lrs(constant) == pytest.approx([peak] * 4)


def test_weight_decay_changes_the_adapter(tiny_model_dir, tmp_path):
    _, _, plain = run(tmp_path, tiny_model_dir, "plain", lora=LoraSettings(dropout=0.0))
    _, _, decayed = run(tmp_path, tiny_model_dir, "decayed", lora=LoraSettings(dropout=0.0), weight_decay=0.5)
    a, b = adapter(plain), adapter(decayed)
    lora_b = [k for k in a if "lora_B" in k]
    # AdamW decay shrinks weights: the decayed adapter's B matrices are smaller.
    assert sum(b[k].norm() for k in lora_b) < sum(a[k].norm() for k in lora_b)


def test_gradient_accumulation_splits_each_step_with_the_same_result(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    real = run_module.batch_loss

    def counting(model, batch, stats=None):
        calls.append(int(batch["n_tokens"]))
        return real(model, batch, stats)

    monkeypatch.setattr(run_module, "batch_loss", counting)
    _, _, whole = run(tmp_path, tiny_model_dir, "whole", lora=LoraSettings(dropout=0.0))
    whole_calls, calls[:] = len(calls), []
    _, _, split = run(tmp_path, tiny_model_dir, "split", lora=LoraSettings(dropout=0.0), gradient_accumulation_steps=2)
    assert (whole_calls, len(calls)) == (4, 8)  # 4 steps: one forward each, then two
    # Token-weighted accumulation: the same loss curve as the whole batch (up to float rounding).
    assert [r["train_loss"] for r in split.metrics] == pytest.approx([r["train_loss"] for r in whole.metrics], rel=1e-4)


def test_eval_interval_adds_validations(tiny_model_dir, tmp_path):
    config, _, result = run(tmp_path, tiny_model_dir, "eval", eval_every=1,
                            validation_file=make_config(tmp_path, tiny_model_dir).validation_file)
    assert [r["step"] for r in result.metrics if r["valid_loss"] is not None] == [1, 2, 3, 4]


def test_early_stopping_stops_and_restores_the_best_weights(tiny_model_dir, tmp_path):
    valid = make_config(tmp_path, tiny_model_dir).validation_file
    hp = Hyperparameters(n_epochs=10, batch_size=2, learning_rate_multiplier=10.0)
    config, recorder, result = run(tmp_path, tiny_model_dir, "early", hyperparameters=hp, eval_every=1,
                                   early_stopping_patience=2, validation_file=valid, lr_scheduler="constant")
    assert result.early_stopped and result.steps < 40
    validations = [r["valid_loss"] for r in result.metrics if r["valid_loss"] is not None]
    best = min(validations)
    assert validations[-2:] > [best, best] and validations[-3] == best  # two evaluations without improvement
    # The saved adapter holds the best weights: re-evaluating it gives the best validation loss.
    config.resume_from = None
    from peft import PeftModel

    from worker.training import load_base_model, make_batch, read_jsonl, tokenize_example
    from worker.training.batching import batch_loss

    base, tokenizer = load_base_model(tiny_model_dir, "cpu")
    tuned = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    data = [tuple(tokenize_example(tokenizer, e, 1024)[:2]) for e in read_jsonl(valid)]
    with torch.no_grad():
        sums = [batch_loss(tuned, make_batch(data[i : i + 2], 0, packed=True, row_tokens=4096)) for i in range(0, 4, 2)]
    assert sum(s[0].item() for s in sums) / sum(s[2] for s in sums) == pytest.approx(best, rel=1e-5)


def test_prompt_loss_weight_changes_training(tiny_model_dir, tmp_path):
    _, _, plain = run(tmp_path, tiny_model_dir, "plain", lora=LoraSettings(dropout=0.0))
    _, _, weighted = run(tmp_path, tiny_model_dir, "weighted", lora=LoraSettings(dropout=0.0), prompt_loss_weight=0.5)
    assert weighted.metrics[0]["train_loss"] != pytest.approx(plain.metrics[0]["train_loss"], rel=1e-3)
    assert not torch.equal(adapter(plain)["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"],
                           adapter(weighted)["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])


def test_lora_rank_alpha_dropout(tiny_model_dir, tmp_path):
    _, _, r4 = run(tmp_path, tiny_model_dir, "r4", lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    config = json.loads((r4.adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.0)
    assert {t.shape[0] for k, t in adapter(r4).items() if "lora_A" in k} == {4}
    _, _, dropped = run(tmp_path, tiny_model_dir, "drop", lora=LoraSettings(r=4, alpha=8, dropout=0.5))
    # dropout changes the LoRA branch's input (no effect at step 1, where B is still zero)
    assert dropped.metrics[-1]["train_loss"] != r4.metrics[-1]["train_loss"]


def test_dora_adds_magnitude_vectors(tiny_model_dir, tmp_path):
    _, _, dora = run(tmp_path, tiny_model_dir, "dora", lora=LoraSettings(use_dora=True))
    assert any("lora_magnitude_vector" in k for k in adapter(dora))
    assert json.loads((dora.adapter_dir / "adapter_config.json").read_text())["use_dora"] is True


def test_top_k_layers_leaves_the_first_layers_frozen(tiny_model_dir, tmp_path):
    _, recorder, top = run(tmp_path, tiny_model_dir, "top", lora=LoraSettings(train_top_k_layers=1))
    keys = adapter(top)
    assert keys and all(".layers.1." in k for k in keys)  # the tiny model has 2 layers: only the top one adapts
    _, _, full = run(tmp_path, tiny_model_dir, "full")
    assert any(".layers.0." in k for k in adapter(full))


def test_freeze_first_n_layers_leaves_those_layers_unchanged(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from worker.training import load_base_model

    _, _, frozen = run(tmp_path, tiny_model_dir, "frozen", lora=LoraSettings(freeze_first_n_layers=1))
    keys = adapter(frozen)
    assert keys and all(".layers.1." in k for k in keys)  # 2 layers: layer 0 gets no adapter, layer 1 does
    base, _ = load_base_model(tiny_model_dir, "cpu")
    before = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in base.model.layers]
    tuned = PeftModel.from_pretrained(base, frozen.adapter_dir).merge_and_unload()  # the adapter folded in
    after = [layer.state_dict() for layer in tuned.model.layers]
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert not torch.equal(before[1]["self_attn.q_proj.weight"], after[1]["self_attn.q_proj.weight"])


def test_freeze_first_n_layers_is_checked():
    with pytest.raises(ValueError, match="freeze_first_n_layers and lora.train_top_k_layers both choose"):
        LoraSettings(freeze_first_n_layers=1, train_top_k_layers=1)
    with pytest.raises(ValueError, match="freeze_first_n_layers must be between 1"):
        LoraSettings(freeze_first_n_layers=0)
    assert training_options({"freeze_first_n_layers": 1})["lora"] == LoraSettings(freeze_first_n_layers=1)


def test_freezing_every_layer_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="freeze_first_n_layers=2 but the model has 2 layers: at most 1 can be frozen"):
        run(tmp_path, tiny_model_dir, "all", lora=LoraSettings(freeze_first_n_layers=2))


def test_gradient_checkpointing_recomputes_the_layers_with_the_same_losses(tiny_model_dir, tmp_path, monkeypatch):
    """Each decoder layer's forward runs again in the backward pass; the losses and the adapter stay the same.
    The hook sits on the layer's attention: transformers checkpoints the layer's ``forward`` inside the
    layer's own hooks (so those fire once either way), and torch stops a recompute once it has the
    tensors the backward needs (so a post-hook on the layer's last module may not fire again)."""
    calls = []
    real = run_module.apply_method

    def hooked(model, config):
        model = real(model, config)
        model.get_base_model().model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
        return model

    monkeypatch.setattr(run_module, "apply_method", hooked)
    _, _, plain = run(tmp_path, tiny_model_dir, "plain")
    plain_calls, calls[:] = len(calls), []
    config, _, checkpointed = run(tmp_path, tiny_model_dir, "checkpointed", gradient_checkpointing=True)
    assert (plain_calls, len(calls)) == (4, 8)  # 4 steps: one forward each, then one more in each backward
    assert [r["train_loss"] for r in checkpointed.metrics] == pytest.approx([r["train_loss"] for r in plain.metrics],
                                                                            rel=1e-5)
    a, b = adapter(plain), adapter(checkpointed)
    assert any(t.abs().sum() > 0 for k, t in b.items() if "lora_B" in k)  # the adapter did learn through the recompute
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert training_options({"gradient_checkpointing": True})["gradient_checkpointing"] is True


def test_training_options_from_job_hyperparameters():
    options = training_options({"n_epochs": 3, "eval_interval": 5, "lora_r": 8, "use_dora": True, "weight_decay": 0.1})
    assert options["eval_every"] == 5 and options["weight_decay"] == 0.1
    assert options["lora"] == LoraSettings(r=8, use_dora=True)


@pytest.mark.parametrize("quantization, layer_type", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_qlora_trains_on_a_quantized_base(tiny_model_dir, tmp_path, quantization, layer_type):
    """bitsandbytes 0.50 on CPU: the base's linear layers are quantized, the LoRA adapter learns."""
    from worker.training import load_base_model

    base, _ = load_base_model(tiny_model_dir, "cpu", quantization)
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == layer_type
    _, _, result = run(tmp_path, tiny_model_dir, quantization, lora=LoraSettings(quantization=quantization),
                       hyperparameters=Hyperparameters(n_epochs=3, batch_size=2, learning_rate_multiplier=5.0))
    assert result.metrics[-1]["train_loss"] < 0.95 * result.metrics[0]["train_loss"]
    assert any(t.abs().sum() > 0 for k, t in adapter(result).items() if "lora_B" in k)


def test_full_finetune_of_selected_layers(tiny_model_dir, tmp_path):
    from worker.training import load_base_model

    _, _, result = run(tmp_path, tiny_model_dir, "full1", lora=LoraSettings(full_finetune_layers=[1]))
    keys = adapter(result)
    full = {k: v for k, v in keys.items() if ".layers.1." in k}
    assert "base_model.model.model.layers.1.self_attn.q_proj.weight" in full and not any("lora" in k for k in full)
    assert any("lora_A" in k and ".layers.0." in k for k in keys)
    base, _ = load_base_model(tiny_model_dir, "cpu")
    assert not torch.equal(full["base_model.model.model.layers.1.self_attn.q_proj.weight"],
                           base.model.layers[1].self_attn.q_proj.weight)  # the layer's own weights were trained
