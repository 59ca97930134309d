"""Pause and resume: a run stopped by should_pause and resumed from its checkpoint gives the same
loss curve and the same adapter as one that never stopped (bit-identical on CPU)."""

import pytest
import torch
from safetensors.torch import load_file

from worker.training import Hyperparameters, LoraSettings, NullCallbacks, train

from .test_loop import Recorder, make_config
from .toy_data import pirate_chat_examples, write_jsonl


def losses(result):
    return [(row["step"], row["train_loss"], row["valid_loss"]) for row in result.metrics]


@pytest.mark.parametrize("pause_at", [5, 8])  # mid-epoch and mid-log-window; exactly at an epoch end
def test_paused_and_resumed_run_matches_uninterrupted_run(tiny_model_dir, tmp_path, pause_at):
    hp = Hyperparameters(n_epochs=3, batch_size=2, learning_rate_multiplier=5.0)
    common = dict(hyperparameters=hp, log_every=3, checkpoint_every=3, lora=LoraSettings(dropout=0.2))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = train(make_config(tmp_path / "a", tiny_model_dir, **common), NullCallbacks())

    config = make_config(tmp_path / "b", tiny_model_dir, **common)
    recorder = Recorder(pause_after_polls=pause_at)
    paused = train(config, recorder)
    assert paused.stopped and paused.paused and paused.steps == pause_at and paused.adapter_dir is None
    assert paused.checkpoint_dir == config.checkpoint_dir / f"step-{pause_at}"
    assert recorder.checkpoints[-1][:2] == (pause_at, paused.checkpoint_dir)
    assert [s for s, _, _ in recorder.checkpoints].count(pause_at) == 1  # once per step, even at an epoch end
    assert (paused.checkpoint_dir / "adapter_model.safetensors").is_file()
    assert not config.output_dir.exists()

    config.resume_from = paused.checkpoint_dir
    resumed = train(config, NullCallbacks())
    assert not resumed.stopped and resumed.steps == straight.steps == 12
    assert losses(resumed) == losses(straight)  # exact float equality, validation included
    assert resumed.trained_tokens == straight.trained_tokens
    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_other_data(tiny_model_dir, tmp_path):
    hp = Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=1.0)
    config = make_config(tmp_path, tiny_model_dir, hyperparameters=hp, validation_file=None)
    paused = train(config, Recorder(pause_after_polls=2))
    write_jsonl(config.training_file, pirate_chat_examples(8, seed=7))
    config.resume_from = paused.checkpoint_dir
    with pytest.raises(ValueError, match="different run"):
        train(config, NullCallbacks())


def test_checkpoint_every_and_retention(tiny_model_dir, tmp_path):
    hp = Hyperparameters(n_epochs=2, batch_size=2, learning_rate_multiplier=1.0)
    config = make_config(tmp_path, tiny_model_dir, hyperparameters=hp, checkpoint_every=3, keep_checkpoints=1)
    recorder = Recorder()
    train(config, recorder)
    assert [s for s, _, _ in recorder.checkpoints] == [3, 4, 6, 8]  # every 3 steps plus epoch ends (4 steps)
    best = min(recorder.checkpoints, key=lambda c: c[2]["valid_loss"] if c[2]["valid_loss"] is not None
               else c[2]["train_loss"])[0]
    assert sorted(int(p.name[5:]) for p in config.checkpoint_dir.iterdir()) == sorted({8, best})
