"""Batches without wasted padding: examples packed into rows with per-example position ids.

Each example is ``(input_ids, labels)`` with ``labels[i] = -100`` where token ``i`` is not learned.
A batch carries, per row position ``p``, the token, its position id, the *next* token of the
same example as target (``-100`` at an example's last token, so no loss ever crosses an example
boundary), and the loss weight of that target: 1 for a learned token, ``prompt_loss_weight``
for any other token, 0 where there is no target.

``packed``: examples are first-fit packed into rows of at most ``row_tokens`` tokens; position
ids restart at 0 for every example and no attention mask is passed, so transformers builds the
block-diagonal causal mask (``find_packed_sequence_indices``): no token attends across examples.
``segments``: every example in one row, with ``segment_lengths`` (the examples' lengths in row
order) for ``segment_attention`` to attend within each example alone: no mask, no padding, and
logits only at the positions with a target.
``padded``: one example per row, right-padded (causal attention never looks at the padding).
Padding positions continue the last example's positions and carry weight 0.
"""

from __future__ import annotations

import torch

from .data import IGNORE_INDEX
from .fused_loss import fused_head, linear_cross_entropy

Example = tuple[list[int], list[int]]


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit-decreasing: group example indices into rows of at most ``row_tokens`` tokens
    (an example longer than that gets a row of its own). Deterministic for given lengths."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_tokens - lengths[i])
    return rows


def make_batch(
    examples: list[Example], pad_token_id: int, *, packed: bool, row_tokens: int, prompt_loss_weight: float = 0.0,
    segments: bool = False,
) -> dict[str, torch.Tensor]:
    """Tensors for one forward pass: input_ids, position_ids, targets, weights, learned (all [rows, width]);
    with ``segments``, one row and its ``segment_lengths``."""
    if segments:
        groups = [list(range(len(examples)))]
    elif packed:
        groups = pack_rows([len(ids) for ids, _ in examples], row_tokens)
    else:
        groups = [[i] for i in range(len(examples))]
    rows = []
    for group in groups:
        ids, pos, tgt, wts, lrn = [], [], [], [], []
        for i in group:
            example_ids, labels = examples[i]
            n = len(example_ids)
            ids += example_ids
            pos += range(n)
            next_labels = labels[1:] + [IGNORE_INDEX]
            next_ids = example_ids[1:] + [IGNORE_INDEX]
            for j in range(n):
                learned = next_labels[j] != IGNORE_INDEX
                tgt.append(next_ids[j])
                wts.append(1.0 if learned else (prompt_loss_weight if j < n - 1 else 0.0))
                lrn.append(learned)
        rows.append((ids, pos, tgt, wts, lrn))
    width = max(len(r[0]) for r in rows)
    shape = (len(rows), width)
    batch = {
        "input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "targets": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "weights": torch.zeros(shape, dtype=torch.float32),
        "learned": torch.zeros(shape, dtype=torch.bool),
    }
    for r, (ids, pos, tgt, wts, lrn) in enumerate(rows):
        n = len(ids)
        batch["input_ids"][r, :n] = torch.tensor(ids)
        batch["position_ids"][r, :n] = torch.tensor(pos)
        batch["position_ids"][r, n:] = torch.arange(pos[-1] + 1, pos[-1] + 1 + width - n)
        batch["targets"][r, :n] = torch.tensor(tgt)
        batch["weights"][r, :n] = torch.tensor(wts)
        batch["learned"][r, :n] = torch.tensor(lrn)
    batch["targets"][batch["weights"] == 0] = IGNORE_INDEX
    batch["n_tokens"] = torch.tensor(sum(len(ids) for ids, _ in examples))
    if segments:
        batch["segment_lengths"] = torch.tensor([len(ids) for ids, _ in examples])
    return batch


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor],
               stats: dict | None = None) -> tuple[torch.Tensor, float, int, int]:
    """(sum of weighted token losses, sum of weights, learned tokens, learned tokens predicted right).

    Logits are computed only at positions with a target (``logits_to_keep``), which spares the
    vocabulary projection wherever nothing is learned; on a plain frozen head, together with the
    loss a chunk at a time (``fused_loss``), never all at once. With ``stats``, also adds to
    ``stats["sequences"]`` the examples with a learned token and to ``stats["sequences_right"]``
    those whose learned tokens were all predicted right (the legacy sequence accuracy).
    """
    weights = batch["weights"]
    keep = (weights > 0).any(dim=0).nonzero().squeeze(1)
    # use_cache=False matters: with a cache transformers ignores packed position ids in the mask.
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "segment_lengths" in batch:
        inputs["segment_lengths"] = tuple(batch["segment_lengths"].tolist())
    weights, targets, learned = weights[:, keep], batch["targets"][:, keep], batch["learned"][:, keep]
    fused = fused_head(model)
    if fused is not None:
        decoder, head = fused
        hidden = decoder(**inputs).last_hidden_state[:, keep]
        loss, predicted = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head, targets.reshape(-1),
                                               weights.reshape(-1))
        predicted = predicted.view(targets.shape)
    else:
        logits = model(**inputs, logits_to_keep=keep).logits
        flat = logits.float().reshape(-1, logits.shape[-1])
        # No boolean indexing of the [tokens, vocab] logits: it copies them, and its backward fills a zero tensor as large.
        losses = torch.nn.functional.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX,
                                                   reduction="none")
        loss = (losses * weights.reshape(-1)).sum()
        with torch.no_grad():
            predicted = logits.argmax(-1)
    if stats is not None:
        _count_sequences(stats, predicted, targets, learned, batch["position_ids"], keep)
    correct = int(((predicted == targets) & learned).sum())
    return loss, float(weights.sum()), int(learned.sum()), correct


@torch.no_grad()
def _count_sequences(stats: dict, predicted: torch.Tensor, targets: torch.Tensor, learned: torch.Tensor,
                     position_ids: torch.Tensor, keep: torch.Tensor) -> None:
    """Per example (a new one starts wherever position_ids is 0): any learned token, any wrong one."""
    rows, width = position_ids.shape
    segment = position_ids.eq(0).long().cumsum(dim=1)[:, keep]  # 1-based example index in its row
    ids = torch.arange(rows, device=segment.device).unsqueeze(1) * (width + 1) + segment
    wrong = learned & (predicted != targets)
    has_learned = torch.zeros(rows * (width + 1), dtype=torch.bool, device=ids.device)
    has_wrong = torch.zeros_like(has_learned)
    has_learned[ids[learned]] = True
    has_wrong[ids[wrong]] = True
    stats["sequences"] = stats.get("sequences", 0) + int(has_learned.sum())
    stats["sequences_right"] = stats.get("sequences_right", 0) + int((has_learned & ~has_wrong).sum())
