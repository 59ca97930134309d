"""Nothing unsafe is loaded: safetensors only (a pickle adapter is refused before PEFT sees it),
never trust_remote_code, base models only from the configured registry and only with code that
ships with transformers, and the broker's messages only as JSON."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.db import session_scope
from app.core.safe_loading import UnsafeModelError, check_adapter_dir, check_base_model_dir
from app.models import FineTunedModel, FineTuningJob
from tests.conftest import REPO, TINY, Api, new_key
from tests.data import chat_jsonl


class _Marker:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _pickle_adapter(tmp: Path, tiny_adapter_config: dict, marker: Path) -> Path:
    adapter = tmp / "pickled-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(tiny_adapter_config))
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"weights": _Marker(marker)}))
    return adapter


ADAPTER_CONFIG = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
                  "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": TINY}


def test_trust_remote_code_is_never_set():
    hits = []
    for path in list((REPO / "app").rglob("*.py")) + list((REPO / "worker").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "trust_remote_code" in line and not line.lstrip().startswith("#"):
                hits.append((path.relative_to(REPO).as_posix(), number, line.strip()))
    assert hits, "the model loader passes trust_remote_code=False explicitly"
    for where, number, line in hits:
        if where == "app/core/safe_loading.py":
            continue  # the docstring and messages that explain the refusal
        values = re.findall(r"trust_remote_code[\"']?\s*[=:]\s*([^,)\s}]+)", line)
        assert values and set(values) == {"False"} and line.count("trust_remote_code") == len(values), \
            (where, number, line)


def test_a_pickle_adapter_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    adapter = _pickle_adapter(tmp_path, ADAPTER_CONFIG, marker)
    with pytest.raises(UnsafeModelError, match="adapter_model.bin"):
        check_adapter_dir(adapter)
    # next to a safetensors file too: PEFT would pick the safetensors, but the folder is not ours to trust
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UnsafeModelError, match="pickle"):
        check_adapter_dir(adapter)
    assert not marker.exists()


def test_completions_on_a_model_with_a_pickle_adapter_are_refused_with_400(api, settings, tmp_path):
    """The real path: a fine-tuned model whose stored adapter is a pickle is never handed to PEFT."""
    marker = tmp_path / "unpickled"
    file_id = api.upload(chat_jsonl()).json()["id"]
    job_id = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id}).json()["id"]
    adapter = _pickle_adapter(settings.resolved_data_dir / "jobs", ADAPTER_CONFIG, marker)
    model_id = f"ft:{TINY}:pickle:{job_id[-8:]}"
    with session_scope(settings.resolved_database_url) as session:
        job = session.scalar(select(FineTuningJob).where(FineTuningJob.id == job_id))
        session.add(FineTunedModel(id=model_id, project_pk=job.project_pk, job_pk=job.pk, base_model=TINY,
                                   adapter_path=str(adapter)))
    for url, body in (("/v1/completions", {"model": model_id, "prompt": "hi", "max_tokens": 2}),
                      ("/v1/chat/completions", {"model": model_id, "max_tokens": 2,
                                                "messages": [{"role": "user", "content": "hi"}]})):
        response = api.post(url, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "model_not_supported"
        assert "adapter_model.bin" in response.json()["error"]["message"]
        assert str(settings.resolved_data_dir) not in response.text  # no server paths
    assert not marker.exists()


@pytest.fixture
def registry_client(settings, tiny_model_dir, tmp_path):
    """A server whose base-model registry holds the tiny model, one whose config names its own
    code (auto_map), one with a model_type transformers does not know, and one with pickle weights."""
    root = tmp_path / "registry"
    root.mkdir()
    (root / TINY).symlink_to(tiny_model_dir, target_is_directory=True)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    variants = {"remote-code": {**config, "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}},
                "unknown-type": {**config, "model_type": "evil-llama"},
                "pickled": config}
    for name, cfg in variants.items():
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        for f in tiny_model_dir.iterdir():
            if f.name != "config.json":
                (folder / f.name).symlink_to(f.resolve())
    (root / "remote-code" / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"not even loaded")
    from app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"base_models_dir": root}))) as client:
        yield Api(client, new_key(settings))


def test_a_base_model_that_needs_remote_code_is_refused_with_400(registry_client):
    api = registry_client
    file_id = api.upload(chat_jsonl()).json()["id"]
    jobs_before = api.get("/v1/fine_tuning/jobs").json()["data"]
    for name, reason in (("remote-code", "auto_map"), ("unknown-type", "evil-llama"), ("pickled", "pytorch_model.bin")):
        for url, body in (("/v1/fine_tuning/jobs", {"model": name, "training_file": file_id}),
                          ("/v1/fine-tunes", {"model": name, "training_file": file_id}),
                          ("/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 2})):
            response = api.post(url, json=body)
            assert response.status_code == 400, (url, name, response.text)
            error = response.json()["error"]
            assert error["code"] == "model_not_supported" and error["param"] == "model", error
            assert reason in error["message"] and "/" not in error["message"].replace("/v1", ""), error
    assert api.get("/v1/fine_tuning/jobs").json()["data"] == jobs_before  # nothing was created
    ok = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id})
    assert ok.status_code == 200, ok.text


def test_check_base_model_dir_accepts_the_real_models(tiny_model_dir, smollm2_dir):
    assert check_base_model_dir(tiny_model_dir) == tiny_model_dir
    assert check_base_model_dir(smollm2_dir) == smollm2_dir


@pytest.mark.parametrize("name", ["../tiny-llama", "/etc", "HuggingFaceTB/SmolLM2-135M-Instruct", ".hidden",
                                  "tiny-llama/../tiny-llama", "C:\\models\\x", "https://huggingface.co/gpt2"])
def test_base_models_come_only_from_the_registry(api, name):
    file_id = api.upload(chat_jsonl()).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", json={"model": name, "training_file": file_id})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "model_not_available"


def test_a_model_folder_outside_the_registry_is_not_offered(api, tiny_model_dir, settings, tmp_path):
    outside = tmp_path / "outside-model"
    shutil.copytree(tiny_model_dir, outside, symlinks=True)
    ids = [m["id"] for m in api.get("/v1/models").json()["data"]]
    assert "outside-model" not in ids and str(outside) not in ids
    response = api.post("/v1/completions", json={"model": str(outside), "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 404


def test_celery_accepts_json_only(settings):
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import dumps, loads, prepare_accept_content

    from worker.celery_app import make_celery

    app = make_celery(settings)
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    # What a worker's consumer does with a message body: decode it, accepting only these types.
    accept = prepare_accept_content(app.conf.accept_content)
    content_type, encoding, body = dumps({"job_id": "ftjob-x"}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=accept)
    content_type, encoding, body = dumps({"job_id": "ftjob-x"}, serializer="json")
    assert loads(body, content_type, encoding, accept=accept) == {"job_id": "ftjob-x"}
