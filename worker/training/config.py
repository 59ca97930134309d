"""Training configuration: resolved hyper-parameters, LoRA settings, job config.

The API accepts each hyper-parameter as a number or ``"auto"``; ``auto`` resolves
from the number of training examples ``n``:

=========================  ===================================================
hyper-parameter            ``auto`` value
=========================  ===================================================
n_epochs                   3; but when ``3 * n < 100``: ``min(25, ceil(100/n))``
batch_size                 ``max(1, min(256, round(0.002 * n)))``
learning_rate_multiplier   1.0 (times ``TrainingConfig.base_learning_rate``)
beta (DPO jobs only)       0.1 (OpenAI's and TRL's default)
=========================  ===================================================

The n_epochs rule is OpenAI's published one: small files get more passes so a
job sees at least ~100 examples. The learning rate actually used is
``base_learning_rate * learning_rate_multiplier`` with linear warm-up over
``warmup_ratio`` of the steps, then linear decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# LoRA learning rate for multiplier 1.0, measured on SmolLM2-135M-Instruct with 30
# chat examples whose answers all open with one phrase. With 2 epochs (60 steps,
# batch 1) the phrase's probability on held-out prompts was 0.53-0.90 at 2e-4,
# 0.99 at 5e-4 and 0.999+ at 1e-3 and 2e-3; with the auto 4 epochs 2e-3 overfits
# (answers degrade) while 1e-3 stays fluent. 1e-3 leaves a margin without that.
DEFAULT_BASE_LEARNING_RATE = 1e-3
DEFAULT_DPO_BETA = 0.1
METHODS = ("supervised", "dpo")

HYPERPARAMETER_NAMES = ("n_epochs", "batch_size", "learning_rate_multiplier")

# Knobs beyond OpenAI's three, as the API accepts them in ``hyperparameters`` -> where they go.
EXTRA_KNOBS = {
    "weight_decay": "weight_decay",
    "warmup_ratio": "warmup_ratio",
    "lr_scheduler": "lr_scheduler",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_seq_len": "max_seq_len",
    "eval_interval": "eval_every",
    "early_stopping_patience": "early_stopping_patience",
    "prompt_loss_weight": "prompt_loss_weight",
    "gradient_checkpointing": "gradient_checkpointing",
}
LORA_KNOBS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "use_dora": "use_dora",
              "train_top_k_layers": "train_top_k_layers", "freeze_first_n_layers": "freeze_first_n_layers",
              "quantization": "quantization", "full_finetune_layers": "full_finetune_layers"}


@dataclass
class Hyperparameters:
    """Resolved hyper-parameters (no ``"auto"`` left)."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def __post_init__(self) -> None:
        _check_int("n_epochs", self.n_epochs, 1, 50)
        _check_int("batch_size", self.batch_size, 1, 256)
        lr = self.learning_rate_multiplier
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
            raise ValueError(f"learning_rate_multiplier must be a number, got {lr!r}")
        if not 0 < lr <= 10:
            raise ValueError(f"learning_rate_multiplier must be > 0 and <= 10, got {lr!r}")
        self.learning_rate_multiplier = float(lr)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")


def _is_auto(value: Any) -> bool:
    return value is None or value == "auto"


def resolve_hyperparameters(requested: dict, n_examples: int) -> Hyperparameters:
    """Turn API hyper-parameters (numbers, ``"auto"`` or missing) into concrete values."""
    if n_examples < 1:
        raise ValueError(f"n_examples must be at least 1, got {n_examples}")
    unknown = set(requested) - set(HYPERPARAMETER_NAMES) - set(EXTRA_KNOBS) - set(LORA_KNOBS) - {"beta"}
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s): {', '.join(sorted(unknown))}")

    n_epochs = requested.get("n_epochs")
    if _is_auto(n_epochs):
        n_epochs = 3 if n_examples * 3 >= 100 else min(25, math.ceil(100 / n_examples))
    batch_size = requested.get("batch_size")
    if _is_auto(batch_size):
        batch_size = max(1, min(256, round(0.002 * n_examples)))
    lr_multiplier = requested.get("learning_rate_multiplier")
    if _is_auto(lr_multiplier):
        lr_multiplier = 1.0
    return Hyperparameters(
        n_epochs=_integral("n_epochs", n_epochs),
        batch_size=_integral("batch_size", batch_size),
        learning_rate_multiplier=lr_multiplier,
    )


def training_options(requested: dict, method: str = "supervised") -> dict:
    """``TrainingConfig`` keyword arguments (``lora`` and ``method`` included) for the extra knobs given in
    the job's hyper-parameters; knobs not given keep the defaults of ``TrainingConfig``/``LoraSettings``.
    ``beta`` (``"auto"``: ``DEFAULT_DPO_BETA``) belongs to DPO jobs only."""
    options = {EXTRA_KNOBS[k]: v for k, v in requested.items() if k in EXTRA_KNOBS and v is not None}
    lora = {LORA_KNOBS[k]: v for k, v in requested.items() if k in LORA_KNOBS and v is not None}
    options["lora"] = LoraSettings(**lora)
    options["method"] = method
    beta = requested.get("beta")
    if beta is not None and method != "dpo":
        raise ValueError("beta is a hyper-parameter of the dpo method only")
    if method == "dpo":
        options["dpo_beta"] = DEFAULT_DPO_BETA if _is_auto(beta) else beta
    return options


def _integral(name: str, value: Any) -> Any:
    """Accept 3.0 for 3 (JSON clients send floats); leave anything else for validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        raise ValueError(f'{name} must be an integer or "auto", got {value!r}')
    return value


@dataclass
class LoraSettings:
    """LoRA adapter shape. ``target_modules=None`` picks them per architecture."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None
    use_dora: bool = False  # weight-decomposed LoRA (DoRA)
    quantization: str = "none"  # QLoRA: "nf4" (4-bit, double quantization) or "int8" base weights
    train_top_k_layers: int | None = None  # adapters only on the top K transformer layers (the rest frozen)
    freeze_first_n_layers: int | None = None  # no adapters on the first N transformer layers (the same, counted from below)
    full_finetune_layers: list[int] | None = None  # these transformer layers train in full (no adapter on them)

    def __post_init__(self) -> None:
        _check_int("lora.r", self.r, 1, 1024)
        _check_int("lora.alpha", self.alpha, 1, 4096)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules)
        ):
            raise ValueError(f"lora.target_modules must be a non-empty list of names, got {self.target_modules!r}")
        if self.quantization not in ("none", "nf4", "int8"):
            raise ValueError(f'lora.quantization must be "none", "nf4" or "int8", got {self.quantization!r}')
        if self.full_finetune_layers is not None:
            if not self.full_finetune_layers:
                raise ValueError("lora.full_finetune_layers must name at least one layer")
            for index in self.full_finetune_layers:
                _check_int("lora.full_finetune_layers[]", index, 0, 1 << 20)
        if self.train_top_k_layers is not None:
            _check_int("lora.train_top_k_layers", self.train_top_k_layers, 1, 1 << 20)
        if self.freeze_first_n_layers is not None:
            _check_int("lora.freeze_first_n_layers", self.freeze_first_n_layers, 1, 1 << 20)
            if self.train_top_k_layers is not None:
                raise ValueError("lora.freeze_first_n_layers and lora.train_top_k_layers both choose the adapted "
                                 "layers: give one of them")


LR_SCHEDULERS = ("linear", "cosine", "constant")
BATCHING = ("packed", "padded")


@dataclass
class TrainingConfig:
    """Everything one training run needs; paths are local.

    Checkpoints (``checkpoint_dir``): one every ``checkpoint_every`` optimizer steps and one at each
    epoch end, each a resumable directory (see ``checkpoints.py``); the last ``keep_checkpoints``
    and the best one are kept. ``resume_from`` continues a run from such a directory.
    """

    base_model_dir: Path
    training_file: Path
    output_dir: Path
    hyperparameters: Hyperparameters
    validation_file: Path | None = None
    checkpoint_dir: Path | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    seed: int = 42
    max_seq_len: int = 1024
    base_learning_rate: float = DEFAULT_BASE_LEARNING_RATE
    warmup_ratio: float = 0.1
    log_every: int = 5
    device: str = "auto"  # "auto" = cuda if available else cpu
    resume_from: Path | None = None
    checkpoint_every: int | None = None  # optimizer steps between checkpoints (plus one per epoch end)
    keep_checkpoints: int = 3  # the last K checkpoints are kept, plus the best one
    prompt_loss_weight: float = 0.0  # weight of the tokens not learned (prompt) in the loss
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"  # linear | cosine | constant, each after linear warm-up
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (same effective batch)
    eval_every: int | None = None  # optimizer steps between validations (plus one per epoch end)
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    batching: str = "packed"  # packed: padding-free rows with per-example position ids; padded: one per row
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass: less memory, more time
    method: str = "supervised"  # supervised (chat / prompt-completion data) | dpo (preference pairs, preference.py)
    dpo_beta: float = DEFAULT_DPO_BETA  # DPO: strength of the pull towards the reference (base) model

    def __post_init__(self) -> None:
        for name in ("base_model_dir", "training_file", "output_dir", "validation_file", "checkpoint_dir", "resume_from"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if not isinstance(self.hyperparameters, Hyperparameters):
            raise ValueError("hyperparameters must be a Hyperparameters instance (see resolve_hyperparameters)")
        _check_int("seed", self.seed, -(1 << 63), (1 << 63) - 1)
        _check_int("max_seq_len", self.max_seq_len, 8, 1 << 20)
        _check_int("log_every", self.log_every, 1, 1 << 30)
        if not self.base_learning_rate > 0:
            raise ValueError(f"base_learning_rate must be > 0, got {self.base_learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        for name in ("checkpoint_every", "eval_every", "early_stopping_patience"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, 1 << 30)
        _check_int("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        _check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1, 1024)
        _check_float("prompt_loss_weight", self.prompt_loss_weight, 0.0, 1.0)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.dpo_beta, bool) or not isinstance(self.dpo_beta, (int, float)) or not 0 < self.dpo_beta <= 2:
            raise ValueError(f"beta must be a number > 0 and <= 2, got {self.dpo_beta!r}")
        if self.method == "dpo" and self.prompt_loss_weight:
            raise ValueError("prompt_loss_weight does not apply to the dpo method (only the replies are compared)")
        if self.early_stopping_patience is not None and self.validation_file is None:
            raise ValueError("early_stopping_patience needs a validation_file")

    @property
    def learning_rate(self) -> float:
        """Peak learning rate: base rate times the job's multiplier."""
        return self.base_learning_rate * self.hyperparameters.learning_rate_multiplier
