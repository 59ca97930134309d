from pathlib import Path

import pytest
import torch

from worker.training import (
    Hyperparameters,
    NullCallbacks,
    TrainingConfig,
    TrainingResult,
    load_base_model,
    read_jsonl,
    tokenize_example,
    train,
)

from .toy_data import pirate_chat_examples, write_jsonl

METRIC_KEYS = {"step", "total_steps", "train_loss", "train_mean_token_accuracy", "tokens_per_second", "epoch"}


class Recorder(NullCallbacks):
    def __init__(self, stop_after_polls: int | None = None, pause_after_polls: int | None = None) -> None:
        self.events: list[dict] = []
        self.checkpoints: list[tuple[int, Path, dict]] = []
        self.removed: list[tuple[int, Path]] = []
        self.polls = 0
        self.pause_polls = 0
        self.stop_after_polls = stop_after_polls
        self.pause_after_polls = pause_after_polls

    def should_pause(self):
        self.pause_polls += 1
        return self.pause_after_polls is not None and self.pause_polls > self.pause_after_polls

    def on_checkpoint_removed(self, step, path):
        self.removed.append((step, path))

    def on_event(self, message, *, type="message", level="info", data=None):
        self.events.append({"message": message, "type": type, "level": level, "data": data})

    def should_stop(self):
        self.polls += 1
        return self.stop_after_polls is not None and self.polls > self.stop_after_polls

    def on_checkpoint(self, step, path, metrics):
        self.checkpoints.append((step, path, metrics))

    def metrics(self) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == "metrics"]


def make_config(tmp_path: Path, model_dir: Path, **overrides) -> TrainingConfig:
    train_file = write_jsonl(tmp_path / "train.jsonl", pirate_chat_examples(8, seed=1))
    valid_file = write_jsonl(tmp_path / "valid.jsonl", pirate_chat_examples(4, seed=2))
    values = dict(
        base_model_dir=model_dir,
        training_file=train_file,
        validation_file=valid_file,
        output_dir=tmp_path / "adapter",
        checkpoint_dir=tmp_path / "checkpoints",
        hyperparameters=Hyperparameters(n_epochs=5, batch_size=2, learning_rate_multiplier=5.0),
        log_every=2,
    )
    return TrainingConfig(**(values | overrides))


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> tuple[TrainingConfig, Recorder, TrainingResult]:
    config = make_config(tmp_path_factory.mktemp("tiny-run"), tiny_model_dir)
    recorder = Recorder()
    return config, recorder, train(config, recorder)


def test_loss_goes_down(tiny_run):
    _, recorder, result = tiny_run
    epoch_end = [m for m in recorder.metrics() if "valid_loss" in m]
    assert len(epoch_end) == 5  # one validation per epoch
    assert epoch_end[-1]["valid_loss"] < epoch_end[0]["valid_loss"] - 0.3
    rows = result.metrics
    assert rows[-1]["train_loss"] < 0.9 * rows[0]["train_loss"]
    assert result.train_loss == rows[-1]["train_loss"] and result.valid_loss == epoch_end[-1]["valid_loss"]


def test_final_adapter_is_safetensors_and_changes_the_model(tiny_run, tokenizer):
    config, _, result = tiny_run
    assert not result.stopped and result.adapter_dir == config.output_dir
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)

    from peft import PeftModel

    base, _ = load_base_model(config.base_model_dir, "cpu")
    ids = torch.tensor([tokenize_example(tokenizer, read_jsonl(config.training_file)[0], 64).input_ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, result.adapter_dir)(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_metrics_events_and_rows(tiny_run, tokenizer):
    config, recorder, result = tiny_run
    total = 5 * 4  # 5 epochs x ceil(8 examples / batch 2)
    metrics = recorder.metrics()
    assert all(METRIC_KEYS <= set(m) for m in metrics)
    assert [m["step"] for m in metrics] == list(range(2, total + 1, 2))
    assert all(m["total_steps"] == total for m in metrics)
    assert all(m["tokens_per_second"] > 0 and 0 <= m["train_mean_token_accuracy"] <= 1 for m in metrics)
    assert [e["message"] for e in recorder.events if e["type"] == "metrics"][-1].startswith(f"Step {total}/{total}:")
    assert result.steps == total
    assert [row["step"] for row in result.metrics] == [m["step"] for m in metrics]
    assert set(result.metrics[0]) >= {"step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                                      "valid_mean_token_accuracy"}  # fmt: skip
    n_tokens = sum(len(tokenize_example(tokenizer, e, 1024).input_ids) for e in read_jsonl(config.training_file))
    assert result.trained_tokens == 5 * n_tokens
    assert any(e["message"] == f"Tokenized 8 training examples ({n_tokens} tokens)" for e in recorder.events)


def test_checkpoint_after_each_epoch_keeps_last_three_and_best(tiny_run):
    config, recorder, _ = tiny_run
    assert [step for step, _, _ in recorder.checkpoints] == [4, 8, 12, 16, 20]
    for step, path, metrics in recorder.checkpoints:
        assert path == config.checkpoint_dir / f"step-{step}"
        assert metrics["step"] == step and metrics["valid_loss"] is not None
    best = min(recorder.checkpoints, key=lambda c: c[2]["valid_loss"])[0]
    kept = sorted({12, 16, 20, best})
    assert sorted(int(p.name[5:]) for p in config.checkpoint_dir.iterdir()) == kept
    assert sorted(step for step, _ in recorder.removed) == sorted({4, 8} - {best})
    for step in kept:
        path = config.checkpoint_dir / f"step-{step}"
        assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in path.iterdir()}
        assert {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= {
            p.name for p in (path / "training_state").iterdir()}


def test_should_stop_ends_training_without_final_adapter(tiny_model_dir, tmp_path):
    config = make_config(tmp_path, tiny_model_dir, checkpoint_dir=None)
    recorder = Recorder(stop_after_polls=3)
    result = train(config, recorder)
    assert result.stopped and result.steps == 3 and result.adapter_dir is None
    assert not config.output_dir.exists()
    assert recorder.checkpoints == []


def test_same_seed_same_losses(tiny_model_dir, tmp_path):
    hp = Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=5.0)
    losses = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        config = make_config(tmp_path / run, tiny_model_dir, hyperparameters=hp, checkpoint_dir=None)
        losses.append([row["train_loss"] for row in train(config, NullCallbacks()).metrics])
    assert losses[0] == losses[1]


def test_another_seed_another_run(tiny_model_dir, tmp_path):
    """The seed drives the adapter's initialisation, dropout and data order: another seed, other losses and weights."""
    from safetensors.torch import load_file

    hp = Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=5.0)
    losses, adapters = [], []
    for seed in (1, 2):
        (tmp_path / str(seed)).mkdir()
        config = make_config(tmp_path / str(seed), tiny_model_dir, hyperparameters=hp, checkpoint_dir=None, seed=seed)
        result = train(config, NullCallbacks())
        losses.append([row["train_loss"] for row in result.metrics])
        adapters.append(load_file(str(result.adapter_dir / "adapter_model.safetensors")))
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    assert adapters[0].keys() == adapters[1].keys()
    assert not any(torch.allclose(adapters[0][k], adapters[1][k]) for k in adapters[0] if "lora_A" in k)


def test_truncation_is_reported(tiny_model_dir, tmp_path, tokenizer):
    config = make_config(tmp_path, tiny_model_dir, validation_file=None, checkpoint_dir=None)
    lengths = [len(tokenize_example(tokenizer, e, 4096).input_ids) for e in read_jsonl(config.training_file)]
    max_len = min(lengths) - 1  # every example loses at least its final token, none loses all its answer
    config.max_seq_len = max_len
    config.hyperparameters = Hyperparameters(n_epochs=1, batch_size=4, learning_rate_multiplier=1.0)
    recorder = Recorder()
    result = train(config, recorder)
    warnings = [e for e in recorder.events if e["level"] == "warn"]
    cut = sum(tokenize_example(tokenizer, e, max_len).cut_answer for e in read_jsonl(config.training_file))
    assert 0 < cut < 8  # the shortest example lost only the newline after its end-of-turn token
    assert [e["message"] for e in warnings] == [
        f"8 training example(s) were longer than {max_len} tokens and were truncated to their first {max_len} "
        f"tokens ({cut} cut inside a learned answer)"
    ]
    assert warnings[0]["data"] == {"truncated_examples": 8, "max_seq_len": max_len, "cut_answers": cut}
    assert result.trained_tokens == 8 * max_len
