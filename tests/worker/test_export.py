"""Export: download the adapter, or the base model with the adapter merged, as safetensors."""

from __future__ import annotations

import io
import zipfile

import torch

from tests.worker.test_job_lifecycle import create
from worker.tasks import run_job


def test_export_adapter_and_merged_model(api, settings, tmp_path):
    job = create(api, hyperparameters={"n_epochs": 1})
    early = api.get(f"/v1/fine_tuning/jobs/{job['id']}/export")
    assert early.status_code == 400 and early.json()["error"]["code"] == "model_not_ready"
    run_job(settings, job["id"])

    response = api.get(f"/v1/fine_tuning/jobs/{job['id']}/export", params={"kind": "adapter"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(names)

    response = api.get(f"/v1/fine_tuning/jobs/{job['id']}/export", params={"kind": "merged"})
    assert response.status_code == 200
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file() and not list((tmp_path / "merged").glob("*.bin"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from worker.training import load_base_model

    base, tokenizer = load_base_model(settings.resolved_base_models_dir / job["model"], "cpu")
    with torch.no_grad():
        ids = tokenizer("Ahoy there", return_tensors="pt").input_ids
        plain = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, settings.jobs_dir / job["id"] / "adapter")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
    assert torch.allclose(merged, tuned, atol=1e-4) and not torch.allclose(merged, plain, atol=1e-4)

    bad = api.get(f"/v1/fine_tuning/jobs/{job['id']}/export", params={"kind": "gguf"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kind"
