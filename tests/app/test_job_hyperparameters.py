"""Hyper-parameters beyond OpenAI's three: accepted and stored when valid, a clear 400 otherwise."""

from __future__ import annotations

import pytest

from tests.app.test_jobs import job_rows
from tests.conftest import TINY
from tests.contract import assert_matches
from tests.data import chat_jsonl

EXTRAS = {"weight_decay": 0.01, "warmup_ratio": 0.2, "lr_scheduler": "cosine", "gradient_accumulation_steps": 2,
          "max_seq_len": 512, "eval_interval": 10, "prompt_loss_weight": 0.1, "lora_r": 8, "lora_alpha": 16,
          "lora_dropout": 0.1, "use_dora": True, "train_top_k_layers": 1, "quantization": "nf4",
          "gradient_checkpointing": True}


@pytest.fixture
def training_file(api) -> str:
    return api.upload(chat_jsonl()).json()["id"]


def test_extra_hyperparameters_are_stored(api, training_file):
    body = {"model": TINY, "training_file": training_file,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, **EXTRAS}}}}
    response = api.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", **EXTRAS}


@pytest.mark.parametrize(
    "hyperparameters, param",
    [
        ({"weight_decay": -0.1}, "hyperparameters.weight_decay"),
        ({"warmup_ratio": 1.0}, "hyperparameters.warmup_ratio"),
        ({"lr_scheduler": "exponential"}, "hyperparameters.lr_scheduler"),
        ({"gradient_accumulation_steps": 0}, "hyperparameters.gradient_accumulation_steps"),
        ({"max_seq_len": 4}, "hyperparameters.max_seq_len"),
        ({"eval_interval": 0}, "hyperparameters.eval_interval"),
        ({"early_stopping_patience": 2}, "hyperparameters.early_stopping_patience"),  # no validation_file
        ({"prompt_loss_weight": 2}, "hyperparameters.prompt_loss_weight"),
        ({"lora_r": 0}, "hyperparameters.lora_r"),
        ({"lora_alpha": "big"}, "hyperparameters.lora_alpha"),
        ({"lora_dropout": 1}, "hyperparameters.lora_dropout"),
        ({"use_dora": "maybe"}, "hyperparameters.use_dora"),
        ({"train_top_k_layers": 0}, "hyperparameters.train_top_k_layers"),
        ({"freeze_first_n_layers": 0}, "hyperparameters.freeze_first_n_layers"),
        ({"freeze_first_n_layers": 1, "train_top_k_layers": 1}, "hyperparameters.freeze_first_n_layers"),
        ({"gradient_checkpointing": "maybe"}, "hyperparameters.gradient_checkpointing"),
        ({"quantization": "fp4"}, "hyperparameters.quantization"),
        ({"lora_rank": 8}, "hyperparameters.lora_rank"),
    ],
)
def test_bad_extra_hyperparameters_are_rejected_and_write_nothing(api, settings, training_file, hyperparameters, param):
    before = job_rows(settings)
    response = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training_file,
                                                      "hyperparameters": hyperparameters})
    assert response.status_code == 400, response.text
    assert_matches(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert job_rows(settings) == before


def test_freeze_first_n_layers_is_stored_and_excludes_train_top_k_layers(api, training_file):
    body = {"model": TINY, "training_file": training_file, "hyperparameters": {"freeze_first_n_layers": 1}}
    response = api.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["hyperparameters"]["freeze_first_n_layers"] == 1
    body["hyperparameters"]["train_top_k_layers"] = 1
    error = api.post("/v1/fine_tuning/jobs", json=body).json()["error"]
    assert "freeze_first_n_layers and train_top_k_layers both choose the adapted layers" in error["message"]
