"""Training throughput: Whetstone's trainer vs transformers ``Trainer`` + PEFT (padding collator).

Same model (SmolLM2-135M-Instruct by default), same chat data of mixed lengths (1-4 turns,
short and long answers), same LoRA shape and hyper-parameters, one process, run one after the
other. Printed for each: real (non-padding) tokens per second, peak memory (CUDA: max allocated;
CPU: peak RSS growth over the phase, sampled every 10 ms), final training loss, and the loss of
the trained model on held-out examples (same evaluator for all). Also the baseline's padding
fraction and the throughput ratio. Whetstone runs twice: ``packed`` (padding-free rows, the
default) and ``padded`` (one example per row), to show which batching is faster.

    PYTHONPATH=. python bench/train_throughput.py [--model DIR] [--examples 48] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.training import (  # noqa: E402
    Hyperparameters,
    LoraSettings,
    NullCallbacks,
    TrainingConfig,
    batch_loss,
    load_base_model,
    make_batch,
    read_jsonl,
    tokenize_example,
    train,
)
from worker.training.methods import lora_targets  # noqa: E402

TOPICS = [
    ("How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it in cold water."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, avoid screens for an hour before bed and keep the room cool."),
    ("How do I make a cup of tea?", "Heat water until it boils, pour it over a tea bag and steep for four minutes."),
    ("Why is the sky blue?", "Molecules in the air scatter short blue wavelengths of sunlight more than red ones."),
    ("How do I start running?", "Begin with short intervals of running and walking three times a week."),
    ("How do I save money on groceries?", "Plan your meals, write a list, buy store brands and avoid shopping hungry."),
    ("What is photosynthesis?", "Plants use light, water and carbon dioxide to make sugar and release oxygen."),
]
# Both trainers: this learning rate, no warm-up, linear decay to 1/steps at the last step (the
# same factor (steps - step) / steps in both), AdamW without weight decay, gradients clipped at 1.
LEARNING_RATE = 1e-3
DETAIL = ("It also helps to take notes as you go, to check your progress every week, and to ask someone with "
          "more experience when you are unsure, because small corrections early save a lot of time later. ")


def make_chat_set(n: int, seed: int) -> list[dict]:
    """Realistic, mixed-length chat: a system prompt of varying length, 1-4 turns, answers from one
    sentence to a few paragraphs."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        system = "You are a helpful assistant." + (" Answer carefully and completely." * rng.choice([0, 1, 4]))
        messages = [{"role": "system", "content": system}]
        for _turn in range(rng.choice([1, 1, 2, 3, 4])):
            question, answer = rng.choice(TOPICS)
            length = rng.choice([0, 0, 1, 2, 5, 10])
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer + " " + DETAIL * length}]
        examples.append({"messages": messages})
    return examples


class PeakMemory:
    """Peak memory of a phase: CUDA max allocated, or peak RSS growth sampled on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.bytes = self.peak - self.start


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def held_out_loss(model, tokenizer, examples: list[dict], device: str) -> float:
    model.eval()
    loss_sum, weight = 0.0, 0.0
    for e in examples:
        ids, labels, _, _ = tokenize_example(tokenizer, e, 4096)
        batch = {k: v.to(device) for k, v in make_batch([(ids, labels)], 0, packed=True, row_tokens=4096).items()}
        loss, w, _, _ = batch_loss(model, batch)
        loss_sum, weight = loss_sum + loss.item(), weight + w
    return loss_sum / weight


def run_whetstone(args, workdir: Path, batching: str, train_file: Path, valid: list[dict]) -> dict:
    config = TrainingConfig(
        base_model_dir=args.model, training_file=train_file, output_dir=workdir / f"adapter-{batching}",
        hyperparameters=Hyperparameters(n_epochs=args.epochs, batch_size=args.batch_size, learning_rate_multiplier=1.0),
        lora=LoraSettings(r=16, alpha=32, dropout=0.05), seed=0, max_seq_len=2048, batching=batching,
        log_every=1, device=args.device, base_learning_rate=LEARNING_RATE, warmup_ratio=0.0, weight_decay=0.0,
    )
    with PeakMemory(args.device) as memory:
        started = time.perf_counter()
        result = train(config, NullCallbacks())
        seconds = time.perf_counter() - started
    from peft import PeftModel

    base, tokenizer = load_base_model(args.model, args.device)
    tuned = PeftModel.from_pretrained(base, result.adapter_dir)
    return {"name": f"whetstone ({batching})", "seconds": seconds, "real_tokens": result.trained_tokens,
            "peak_memory_mb": memory.bytes / 2**20, "final_train_loss": result.train_loss,
            "held_out_loss": held_out_loss(tuned, tokenizer, valid, args.device), "padding_fraction": None}


def run_hf_trainer(args, workdir: Path, train_examples: list[dict], valid: list[dict]) -> dict:
    """What a user would otherwise write: Trainer + PEFT LoRA, DataCollatorForSeq2Seq padding."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(0)
    model, tokenizer = load_base_model(args.model, args.device)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=lora_targets(model, None)))
    rows = []
    for e in train_examples:
        ids, labels, _, _ = tokenize_example(tokenizer, e, 2048)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counts = {"real": 0, "total": 0}

    def counting_collator(features):
        batch = collator(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["total"] += batch["attention_mask"].numel()
        return batch

    training_args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=LEARNING_RATE, warmup_steps=0, lr_scheduler_type="linear", weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[], seed=0, data_seed=0,
        use_cpu=args.device == "cpu", dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=rows, data_collator=counting_collator)
    with PeakMemory(args.device) as memory:
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"name": "transformers Trainer + PEFT", "seconds": seconds, "real_tokens": counts["real"],
            "peak_memory_mb": memory.bytes / 2**20, "final_train_loss": losses[-1] if losses else None,
            "held_out_loss": held_out_loss(model, tokenizer, valid, args.device),
            "padding_fraction": 1 - counts["real"] / counts["total"]}


def main() -> None:
    cache = Path(os.environ.get("WHETSTONE_TEST_MODEL_CACHE", ".cache/test-models"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=cache / "smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    train_examples, valid = make_chat_set(args.examples, seed=1), make_chat_set(8, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        train_file = workdir / "train.jsonl"
        train_file.write_text("".join(json.dumps(e) + "\n" for e in train_examples))
        _, tokenizer = load_base_model(args.model, "cpu")
        lengths = [len(tokenize_example(tokenizer, e, 4096).input_ids) for e in read_jsonl(train_file)]
        print(f"data: {len(lengths)} chat examples, tokens min {min(lengths)} / mean {sum(lengths) / len(lengths):.0f}"
              f" / max {max(lengths)}; batch {args.batch_size}, {args.epochs} epoch(s), device {args.device}, "
              f"torch threads {torch.get_num_threads()}; load: {os.getloadavg()}")
        results = [run_hf_trainer(args, workdir, train_examples, valid),
                   run_whetstone(args, workdir, "packed", train_file, valid),
                   run_whetstone(args, workdir, "padded", train_file, valid)]
    baseline = results[0]["real_tokens"] / results[0]["seconds"]
    for r in results:
        tps = r["real_tokens"] / r["seconds"]
        pad = f", padding {r['padding_fraction']:.1%}" if r["padding_fraction"] is not None else ""
        print(f"{r['name']:30s} {tps:8.1f} real tokens/s  x{tps / baseline:.2f}  {r['seconds']:7.1f} s  "
              f"peak mem +{r['peak_memory_mb']:.0f} MiB  final train loss {r['final_train_loss']:.4f}  "
              f"held-out loss {r['held_out_loss']:.4f}{pad}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
