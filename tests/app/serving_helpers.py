"""Fine-tuned models for serving tests: LoRA adapters on the tiny model with distinct random
weights (so each answers differently), registered the way the worker registers a finished job."""

from __future__ import annotations

import uuid
from pathlib import Path

import torch
from sqlalchemy import select

from app.core.config import Settings
from app.core.db import session_scope
from app.models import FineTunedModel, FineTuningJob, Project
from tests.conftest import TINY


def craft_adapter(base_dir: Path, dest: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    config = LoraConfig(r=8, lora_alpha=32, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(dest)
    return dest


def register_fine_tune(settings: Settings, project: str, adapter_seed: int, base_dir: Path,
                       adapter: Path | None = None) -> tuple[str, Path]:
    """A succeeded job and its fine-tuned model row: `adapter` (a trained one), or one crafted from
    `adapter_seed` under the jobs dir."""
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    if adapter is None:
        adapter = craft_adapter(base_dir, settings.jobs_dir / job_id / "adapter", adapter_seed)
    model_id = f"ft:{TINY}:{project}::{job_id[6:14]}"
    with session_scope(settings.resolved_database_url) as session:
        project_pk = session.scalar(select(Project.pk).where(Project.name == project))
        job = FineTuningJob(id=job_id, project_pk=project_pk, model=TINY, training_file="file-x", seed=adapter_seed,
                            hyperparameters={}, status="succeeded", fine_tuned_model=model_id)
        session.add(job)
        session.flush()
        session.add(FineTunedModel(id=model_id, project_pk=project_pk, job_pk=job.pk, base_model=TINY,
                                   adapter_path=str(adapter)))
    return model_id, adapter


def reference_model(base_dir: Path, adapter: Path | None, quantization: str = "none"):
    """Plain transformers + PEFT, as a user would load it: the base (in 4-bit / 8-bit for a QLoRA
    adapter, as bitsandbytes loads it for training) with this adapter alone."""
    from peft import PeftModel

    from worker.training.model_loading import load_base_model

    model, tokenizer = load_base_model(base_dir, "cpu", quantization)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), tokenizer


def reference_completion(base_dir: Path, adapter: Path | None, prompt: str, max_tokens: int,
                         quantization: str = "none") -> str:
    """What a user gets from `generate`, greedy, with this adapter alone."""
    model, tokenizer = reference_model(base_dir, adapter, quantization)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def reference_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:  # noqa: ANN001
    """The log-probability `model` gives each completion token after the prompt and the ones before it."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(prompt_ids) - 1
    return [float(logp[start + i, token]) for i, token in enumerate(completion_ids)]
