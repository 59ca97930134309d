"""QLoRA fine-tunes are served on a base loaded the way they were trained (bitsandbytes 4-bit on
the CPU here), beside the full-precision base that serves the base model and plain LoRA ones."""

from __future__ import annotations

import asyncio

import httpx
import torch

from app.main import create_app
from tests.app.serving_helpers import reference_logprobs, reference_model, register_fine_tune
from tests.conftest import TINY
from tests.data import chat_jsonl
from worker.tasks import run_job

PROMPT = "What is 3 plus 3?"
TOKENS = 12


def _greedy(model, tokenizer, prompt: str) -> tuple[list[int], list[int], str]:  # noqa: ANN001
    prompt_ids, completion, _ = _greedy_logprobs(model, tokenizer, prompt)
    return prompt_ids, completion, tokenizer.decode(completion, skip_special_tokens=True)


def _greedy_logprobs(model, tokenizer, prompt: str) -> tuple[list[int], list[int], list[float]]:  # noqa: ANN001
    """Greedy `generate`, and each chosen token's log-probability as decoding computed it: one token
    at a time on the cache, as the service decodes (bitsandbytes' 4-bit kernels for one row differ
    from those for a whole sequence by up to ~1e-2 on AVX-512 CPUs)."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id, output_logits=True,
                             return_dict_in_generate=True)
    completion = out.sequences[0, len(prompt_ids):].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), dim=-1)[token]) for step, token in zip(out.logits, completion)]
    return prompt_ids, completion, logprobs


def test_a_qlora_fine_tune_answers_from_its_4bit_base(api, settings, tiny_model_dir):
    file_id = api.upload(chat_jsonl()).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={
        "model": TINY, "training_file": file_id,
        "hyperparameters": {"n_epochs": 1, "learning_rate_multiplier": 5.0, "quantization": "nf4"}}).json()
    run_job(settings, job["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model_id = done["fine_tuned_model"]
    adapter = settings.jobs_dir / job["id"] / "adapter"
    checkpoint = api.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
    plain_lora, plain_adapter = register_fine_tune(settings, model_id.split(":")[2], 1, tiny_model_dir)

    # What plain transformers + PEFT answer: the adapter on a 4-bit-loaded base, and (for contrast)
    # the same adapter on the full-precision base; the base model and a plain LoRA adapter in full precision.
    nf4, tokenizer = reference_model(tiny_model_dir, adapter, "nf4")
    prompt_ids, completion, on_nf4 = _greedy_logprobs(nf4, tokenizer, PROMPT)
    expected = tokenizer.decode(completion, skip_special_tokens=True)
    on_full = reference_logprobs(reference_model(tiny_model_dir, adapter)[0], prompt_ids, completion)
    expected_base = _greedy(*reference_model(tiny_model_dir, None), PROMPT)[2]
    expected_plain = _greedy(*reference_model(tiny_model_dir, plain_adapter), PROMPT)[2]

    app = create_app(settings)
    models = [model_id, TINY, plain_lora, checkpoint["fine_tuned_model_checkpoint"], model_id]

    async def ask_all():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await asyncio.gather(*(client.post(
                "/v1/completions", headers=api.headers,
                json={"model": m, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "logprobs": 0})
                for m in models))

    try:
        answers = asyncio.run(ask_all())
        for response in answers:
            assert response.status_code == 200, response.text
        qlora, base, plain = answers[0].json(), answers[1].json(), answers[2].json()
        assert qlora["model"] == model_id and answers[4].json()["choices"][0]["text"] == qlora["choices"][0]["text"]
        assert qlora["choices"][0]["text"] == expected
        assert qlora["usage"]["completion_tokens"] == len(completion)
        served = qlora["choices"][0]["logprobs"]["token_logprobs"]
        # The served numbers are those of the 4-bit base with the adapter, not of the full-precision one.
        # (Not to 1e-3: on AVX-512 CPUs bitsandbytes' 4-bit kernels give a batch of two rows results that
        # differ from one row's by up to ~1e-2, and the service may batch the two requests for this model.)
        assert max(abs(a - b) for a, b in zip(served, on_nf4, strict=True)) < 2e-2
        assert max(abs(a - b) for a, b in zip(served, on_full, strict=True)) > 1e-1
        assert base["choices"][0]["text"] == expected_base and plain["choices"][0]["text"] == expected_plain
        assert answers[3].status_code == 200  # the job's checkpoint is served on the 4-bit base too
        kinds = sorted({type(s.model.model.layers[0].self_attn.q_proj).__name__ for s in app.state.engine.loaded()})
        assert kinds == ["Linear", "Linear4bit"]  # one full-precision base and one 4-bit base, both of TINY
    finally:
        app.state.engine.close()

