"""DPO on the tiny model: the adapter learns to prefer the preferred reply, and reports rewards."""

from __future__ import annotations

import pytest
import torch

from worker.training import Hyperparameters, TrainingConfig, load_base_model, train
from worker.training.data import pad_id
from worker.training.preference import pair_batch, sequence_logps, tokenize_pair
from worker.training.validation import example_format

from .test_loop import Recorder
from .toy_data import pirate_preference_examples, write_jsonl


def preference_margins(model_dir, adapter_dir, examples) -> list[float]:
    """Per pair: log p(preferred) - log p(non-preferred), of the base model or with the adapter."""
    from peft import PeftModel

    model, tokenizer = load_base_model(model_dir, "cpu")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    pairs = [tokenize_pair(tokenizer, e, 256)[:2] for e in examples]
    with torch.no_grad():
        logps = sequence_logps(model, pair_batch(pairs, pad_id(tokenizer))).tolist()
    return [c - r for c, r in zip(logps[: len(pairs)], logps[len(pairs) :])]


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    config = TrainingConfig(
        base_model_dir=tiny_model_dir, method="dpo", dpo_beta=0.1,
        training_file=write_jsonl(tmp / "train.jsonl", pirate_preference_examples(8, seed=1)),
        validation_file=write_jsonl(tmp / "valid.jsonl", pirate_preference_examples(4, seed=2)),
        output_dir=tmp / "adapter", checkpoint_dir=tmp / "checkpoints",
        hyperparameters=Hyperparameters(n_epochs=3, batch_size=2, learning_rate_multiplier=5.0), log_every=2,
    )
    recorder = Recorder()
    return config, recorder, train(config, recorder)


def test_dpo_raises_the_preferred_replys_probability(dpo_run, tiny_model_dir):
    config, recorder, result = dpo_run
    assert not result.stopped and (result.adapter_dir / "adapter_model.safetensors").is_file()
    held_out = pirate_preference_examples(6, seed=7)  # different questions from training, mostly
    before = preference_margins(tiny_model_dir, None, held_out)
    after = preference_margins(tiny_model_dir, result.adapter_dir, held_out)
    assert all(a > b for a, b in zip(after, before)), (before, after)
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0


def test_dpo_reports_loss_and_rewards(dpo_run):
    _, recorder, result = dpo_run
    metrics = recorder.metrics()
    assert metrics and all({"train_loss", "train_reward_accuracy", "train_reward_margin"} <= set(m) for m in metrics)
    assert all("train_mean_token_accuracy" not in m for m in metrics)  # no token learned: no token accuracy
    first, last = metrics[0], metrics[-1]
    assert first["train_loss"] == pytest.approx(0.6931, abs=0.05)  # -log sigmoid(0): the adapter starts at the base
    assert last["train_loss"] < first["train_loss"] and last["train_reward_margin"] > 0
    validations = [m for m in metrics if "valid_loss" in m]
    assert len(validations) == 3 and {"valid_reward_accuracy", "valid_reward_margin"} <= set(validations[-1])
    assert validations[-1]["valid_loss"] < validations[0]["valid_loss"]
    assert any("reference model" in e["message"] and e["data"] == {"beta": 0.1} for e in recorder.events)
    assert [step for step, _, _ in recorder.checkpoints] == [4, 8, 12]  # resumable checkpoints like any job


def test_beta_changes_training(dpo_run, tiny_model_dir, tmp_path):
    config, _, result = dpo_run
    import dataclasses

    other = dataclasses.replace(config, dpo_beta=1.0, output_dir=tmp_path / "a", checkpoint_dir=None,
                                validation_file=None, hyperparameters=Hyperparameters(1, 2, 5.0))
    first_rows = train(other, Recorder()).metrics
    # with beta 1, rewards are 10x larger for the same log-prob change: the margin grows much faster
    assert first_rows[0]["train_reward_margin"] > result.metrics[0]["train_reward_margin"] * 3


def test_dpo_loss_and_rewards_equal_trls_dpo_trainer(tiny_model_dir, tmp_path):
    """Per pair, our loss and reward margin are what TRL's own DPOTrainer (loss_type "sigmoid", reference =
    the adapter disabled, not precomputed) computes on the same token rows with the same LoRA model."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from worker.training.preference import dpo_loss, reference_logps

    base, tokenizer = load_base_model(tiny_model_dir, "cpu")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False,
                     report_to="none", use_cpu=True, max_length=None)
    unused = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                 "chosen": [{"role": "assistant", "content": "a"}],
                                 "rejected": [{"role": "assistant", "content": "b"}]}])
    trainer = DPOTrainer(model=base, args=args, train_dataset=unused, processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    model = trainer.model.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference, or every loss would be log 2
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    pad = pad_id(tokenizer)
    pairs = [tokenize_pair(tokenizer, e, 256)[:2] for e in pirate_preference_examples(4, seed=3)]
    references = reference_logps(model, pairs, pad, torch.device("cpu"), 2)
    ours, theirs = [], []
    for pair, reference in zip(pairs, references):
        batch, stats = pair_batch([pair], pad), {}
        with torch.no_grad():
            ours.append((dpo_loss(model, batch, torch.tensor([reference]), 0.1, stats).item(), stats["reward_margin_sum"]))
        # TRL's batch: the same rows; completion_mask marks the learned tokens (our "learned" marks their predecessors)
        completion = torch.zeros_like(batch["input_ids"])
        completion[:, 1:] = batch["learned"][:, :-1]
        lengths = torch.tensor([len(pair[0][0]), len(pair[1][0])])
        attention = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
        with torch.no_grad():
            loss = trainer.compute_loss(model, {"input_ids": batch["input_ids"], "attention_mask": attention,
                                                "completion_mask": completion})
        theirs.append((loss.item(), trainer._metrics["eval"]["rewards/margins"][-1]))
    for (loss, margin), (trl_loss, trl_margin) in zip(ours, theirs):
        assert (loss, margin) == pytest.approx((trl_loss, trl_margin), abs=1e-5)
    assert max(abs(loss - 0.6931) for loss, _ in ours) > 0.02  # the pairs tell apart policy and reference


@pytest.mark.parametrize("example, reason", [
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", "content": "a"}]},
     "'non_preferred_output' is missing"),
    ({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}, "'input.messages' must be a non-empty list"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "user", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "preferred_output[0].role must be 'assistant'"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]},
      "preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "c"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "exactly one assistant message"),
    ({"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "a"}]}, "identical"),
])
def test_preference_format_errors(example, reason):
    with pytest.raises(ValueError, match=None) as info:
        example_format(example)
    assert reason in str(info.value)
    assert example_format(pirate_preference_examples(1)[0]) == "preference"


def test_prepare_data_checks_measure_a_pair_by_its_longer_side(tokenizer):
    from worker.dataprep.checks import run_checks
    from worker.dataprep.readers import Record

    examples = pirate_preference_examples(12)
    examples[3]["non_preferred_output"][0]["content"] = "word " * 300
    findings = run_checks([Record(f"line {i + 1}", e) for i, e in enumerate(examples)], tokenizer, max_tokens=200)
    assert not [f for f in findings if f.severity == "error"]
    [long] = [f for f in findings if f.check == "too_long"]
    assert long.where == ["line 4"]


def test_a_paused_dpo_run_resumes_to_the_same_curve(dpo_run, tmp_path):
    """Pause mid-epoch, resume from the checkpoint: the same losses and rewards as the run that never stopped."""
    import dataclasses

    from safetensors.torch import load_file

    config, _, straight = dpo_run
    paused_config = dataclasses.replace(config, output_dir=tmp_path / "adapter", checkpoint_dir=tmp_path / "ckpt")
    paused = train(paused_config, Recorder(pause_after_polls=5))
    assert paused.paused and paused.steps == 5
    resumed = train(dataclasses.replace(paused_config, resume_from=paused.checkpoint_dir), Recorder())
    def curve(result):  # everything but the timing
        return [{k: v for k, v in row.items() if k != "tokens_per_second"} for row in result.metrics]

    assert curve(resumed) == curve(straight)  # exact: losses, rewards, validations
    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_method_and_beta_are_validated(tmp_path):
    from worker.training.config import training_options

    assert training_options({}, "dpo")["dpo_beta"] == 0.1  # "auto"
    assert training_options({"beta": "auto"}, "dpo")["dpo_beta"] == 0.1
    assert training_options({"beta": 0.5}, "dpo")["dpo_beta"] == 0.5
    with pytest.raises(ValueError, match="dpo method only"):
        training_options({"beta": 0.5}, "supervised")
    common = dict(base_model_dir=tmp_path, training_file=tmp_path / "t.jsonl", output_dir=tmp_path / "o",
                  hyperparameters=Hyperparameters(1, 1, 1.0))
    with pytest.raises(ValueError, match="method must be one of"):
        TrainingConfig(**common, method="ppo")
    with pytest.raises(ValueError, match="beta must be"):
        TrainingConfig(**common, method="dpo", dpo_beta=0)
    with pytest.raises(ValueError, match="prompt_loss_weight does not apply"):
        TrainingConfig(**common, method="dpo", prompt_loss_weight=0.5)
