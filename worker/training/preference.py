"""Preference tuning (DPO) on LoRA adapters: pairs of answers, the DPO loss against the base model.

Data: OpenAI's DPO format (``validation.py``): ``input.messages`` (the conversation so far), then
one ``preferred_output`` and one ``non_preferred_output`` assistant message. Each pair becomes two
sequences, conversation + preferred reply and conversation + non-preferred reply, tokenized with the
base model's chat template like supervised chat examples (``data.tokenize_example``) with only the
reply learned (assistant turns inside ``input`` are context).

Loss (Rafailov et al., TRL's ``loss_type="sigmoid"``): with ``logp`` the summed log-probability of a
reply's tokens under the model being trained and ``ref`` the same under the reference model (the
base model: the adapter disabled),

    chosen_reward   = beta * (logp(preferred)     - ref(preferred))
    rejected_reward = beta * (logp(non_preferred) - ref(non_preferred))
    loss            = -log sigmoid(chosen_reward - rejected_reward)

Reported per step: the loss, the reward accuracy (pairs whose preferred reply has the higher reward)
and the reward margin (chosen minus rejected reward), as TRL's DPOTrainer logs them. The reference
log-probabilities are computed once, before training, for every pair (TRL's
``precompute_ref_log_probs``): the base model does not change, so they are the same every epoch.

TRL provides the per-token log-probabilities (``selective_log_softmax``) and the switch to the
reference model (``use_adapter(model, None)`` disables the adapter); the DPO trainer's own loop is
not used, so DPO jobs keep this engine's checkpoints, pause/resume, events and cancellation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .batching import make_batch
from .data import IGNORE_INDEX, read_jsonl, tokenize_example

Sequence = tuple[list[int], list[int]]  # (input_ids, labels)
Pair = tuple[Sequence, Sequence, float, float]  # chosen, rejected, their reference log-probs


def pair_messages(example: dict, output_key: str) -> list[dict]:
    """The conversation of one side of a pair: the input's messages (assistant turns as context only,
    ``weight`` 0), then that output's assistant reply (learned)."""
    context = [dict(m, weight=0) if m.get("role") == "assistant" else dict(m) for m in example["input"]["messages"]]
    return context + [dict(example[output_key][0])]


def tokenize_pair(tokenizer: Any, example: dict, max_seq_len: int) -> tuple[Sequence, Sequence, int, bool]:
    """(preferred sequence, non-preferred sequence, sides truncated, any reply cut)."""
    sides = [tokenize_example(tokenizer, {"messages": pair_messages(example, key)}, max_seq_len)
             for key in ("preferred_output", "non_preferred_output")]
    truncated = sum(s.truncated_tokens > 0 for s in sides)
    return ((sides[0].input_ids, sides[0].labels), (sides[1].input_ids, sides[1].labels), truncated,
            any(s.cut_answer for s in sides))


def load_pairs(path: Path, tokenizer: Any, max_len: int, name: str, on_event: Any) -> list[tuple[Sequence, Sequence]]:
    """Tokenize a preference JSONL file (same over-long rule as supervised data: keep the first ``max_len``
    tokens; a pair where either reply is cut away entirely is skipped); report both counts."""
    pairs, truncated, cut, empty = [], 0, 0, 0
    for index, raw in enumerate(read_jsonl(path)):
        try:
            chosen, rejected, dropped, was_cut = tokenize_pair(tokenizer, raw, max_len)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{name} example {index + 1}: {e}") from None
        truncated += dropped > 0
        cut += was_cut
        if any(all(label == IGNORE_INDEX for label in labels[1:]) for _, labels in (chosen, rejected)):
            empty += 1
            continue
        pairs.append((chosen, rejected))
    if truncated:
        on_event(f"{truncated} {name} preference pair(s) were longer than {max_len} tokens and were truncated to "
                 f"their first {max_len} tokens ({cut} cut inside a reply)", level="warn",
                 data={"truncated_examples": truncated, "max_seq_len": max_len, "cut_answers": cut})
    if empty:
        on_event(f"{empty} {name} preference pair(s) have a reply cut off entirely by max_seq_len and were skipped",
                 level="warn", data={"skipped_examples": empty})
    if not pairs:
        raise ValueError(f"the {name} file has no usable preference pairs")
    n_tokens = sum(len(c[0]) + len(r[0]) for c, r in pairs)
    on_event(f"Tokenized {len(pairs)} {name} preference pairs ({n_tokens} tokens)")
    return pairs


def pair_batch(pairs: list, pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded row per sequence: the preferred replies first, then the non-preferred (same order)."""
    sequences = [p[0] for p in pairs] + [p[1] for p in pairs]
    width = max(len(ids) for ids, _ in sequences)
    return make_batch(sequences, pad_token_id, packed=False, row_tokens=width)


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's learned tokens (the reply), shape [rows]."""
    from trl.trainer.utils import selective_log_softmax

    learned = batch["learned"]
    keep = learned.any(dim=0).nonzero().squeeze(1)  # logits only where some row learns a token
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=keep,
                   use_cache=False).logits
    targets = batch["targets"][:, keep].clamp(min=0)  # -100 rows are masked below
    per_token = selective_log_softmax(logits.float(), targets)
    return (per_token * learned[:, keep]).sum(dim=1)


@torch.no_grad()
def reference_logps(model: Any, pairs: list, pad_token_id: int, device: torch.device,
                    batch_size: int) -> list[tuple[float, float]]:
    """(preferred, non-preferred) log-probabilities of each pair under the reference model: the base
    model, that is ``model`` with its adapter disabled (TRL's ``use_adapter(model, None)``)."""
    from trl.trainer.utils import use_adapter

    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    with use_adapter(model, None):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pair_batch(chunk, pad_token_id).items()}
            logps = sequence_logps(model, batch).tolist()
            out += list(zip(logps[: len(chunk)], logps[len(chunk) :]))
    model.train(was_training)
    return out


def dpo_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], reference: torch.Tensor, beta: float,
             stats: dict | None = None) -> torch.Tensor:
    """Sum over the batch's pairs of the DPO loss; ``reference`` is [pairs, 2]. With ``stats``, adds to
    ``pairs``, ``reward_correct``, ``reward_margin_sum``, ``chosen_reward_sum`` and ``rejected_reward_sum``."""
    logps = sequence_logps(model, batch)
    chosen, rejected = logps.chunk(2)
    chosen_rewards = beta * (chosen - reference[:, 0])
    rejected_rewards = beta * (rejected - reference[:, 1])
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    if stats is not None:
        with torch.no_grad():
            stats["pairs"] = stats.get("pairs", 0) + len(losses)
            stats["reward_correct"] = stats.get("reward_correct", 0) + int((chosen_rewards > rejected_rewards).sum())
            stats["reward_margin_sum"] = stats.get("reward_margin_sum", 0.0) + float((chosen_rewards - rejected_rewards).sum())
            stats["chosen_reward_sum"] = stats.get("chosen_reward_sum", 0.0) + float(chosen_rewards.sum())
            stats["rejected_reward_sum"] = stats.get("rejected_reward_sum", 0.0) + float(rejected_rewards.sum())
    return losses.sum()


def reward_metrics(stats: dict, prefix: str) -> dict:
    """``{prefix}_reward_accuracy``, ``_reward_margin``, ``_chosen_reward``, ``_rejected_reward`` (means per pair)."""
    n = stats.get("pairs", 0)
    if not n:
        return {}
    return {f"{prefix}_reward_accuracy": stats["reward_correct"] / n,
            f"{prefix}_reward_margin": stats["reward_margin_sum"] / n,
            f"{prefix}_chosen_reward": stats["chosen_reward_sum"] / n,
            f"{prefix}_rejected_reward": stats["rejected_reward_sum"] / n}
