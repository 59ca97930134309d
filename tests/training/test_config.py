import pytest

from worker.training import Hyperparameters, LoraSettings, TrainingConfig, resolve_hyperparameters


@pytest.mark.parametrize(
    "n_examples, n_epochs, batch_size",
    [
        (10, 10, 1),  # 3 * 10 < 100: ceil(100 / 10) epochs
        (3, 25, 1),  # ceil(100 / 3) = 34, capped at 25
        (30, 4, 1),
        (34, 3, 1),  # 3 * 34 = 102 >= 100
        (1000, 3, 2),
        (5000, 3, 10),
        (1_000_000, 3, 256),  # batch size capped at 256
    ],
)
def test_auto_rules(n_examples, n_epochs, batch_size):
    hp = resolve_hyperparameters({}, n_examples)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (n_epochs, batch_size, 1.0)
    explicit_auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert resolve_hyperparameters(explicit_auto, n_examples) == hp


def test_explicit_values_win():
    hp = resolve_hyperparameters({"n_epochs": 2, "batch_size": 8.0, "learning_rate_multiplier": 0.5}, 10)
    assert hp == Hyperparameters(n_epochs=2, batch_size=8, learning_rate_multiplier=0.5)
    assert isinstance(hp.batch_size, int)


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_epochs", 0),
        ("n_epochs", 51),
        ("n_epochs", 2.5),
        ("n_epochs", "three"),
        ("n_epochs", True),
        ("batch_size", 0),
        ("batch_size", 257),
        ("learning_rate_multiplier", 0),
        ("learning_rate_multiplier", -1.0),
        ("learning_rate_multiplier", 10.5),
        ("learning_rate_multiplier", "fast"),
        ("learning_rate_multiplier", float("nan")),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        resolve_hyperparameters({field: value}, 100)


def test_unknown_hyperparameter_rejected():
    with pytest.raises(ValueError, match="n_epoch"):
        resolve_hyperparameters({"n_epoch": 3}, 100)


def test_learning_rate_is_base_times_multiplier(tmp_path):
    hp = Hyperparameters(n_epochs=1, batch_size=1, learning_rate_multiplier=2.0)
    config = TrainingConfig(tmp_path, tmp_path / "t.jsonl", tmp_path / "out", hp, base_learning_rate=1e-3)
    assert config.learning_rate == pytest.approx(2e-3)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"r": 0}, "lora.r"), ({"alpha": 0}, "lora.alpha"), ({"dropout": 1.0}, "lora.dropout"),
     ({"target_modules": []}, "lora.target_modules")],
)  # fmt: skip
def test_lora_settings_validate(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"log_every": 0}, "log_every"), ({"warmup_ratio": 1.0}, "warmup_ratio"),
     ({"base_learning_rate": 0.0}, "base_learning_rate"), ({"max_seq_len": 0}, "max_seq_len"),
     ({"seed": None}, "seed")],
)  # fmt: skip
def test_training_config_validates(tmp_path, kwargs, field):
    hp = Hyperparameters(n_epochs=1, batch_size=1, learning_rate_multiplier=1.0)
    with pytest.raises(ValueError, match=field):
        TrainingConfig(tmp_path, tmp_path / "t.jsonl", tmp_path / "out", hp, **kwargs)
