"""Batches without wasted padding: examples packed into rows with per-example position ids.

Each example is ``(input_ids, labels)`` with ``labels[i] = -100`` where token ``i`` is not learned.
A batch carries, per row position ``p``, the token, its position id, the *next* token of the
same example as target (``-100`` at an example's last token, so no loss ever crosses an example
boundary), and the loss weight of that target: 1 for a learned token, ``prompt_loss_weight``
for any other token, 0 where there is no target.

``packed``: examples are first-fit packed into rows of at most ``row_tokens`` tokens; position
ids restart at 0 for every example and no attention mask is passed, so transformers builds the
block-diagonal causal mask (``find_packed_sequence_indices``): no token attends across examples.
``padded``: one example per row, right-padded (causal attention never looks at the padding).
Padding positions continue the last example's positions and carry weight 0.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100

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
    examples: list[Example], pad_token_id: int, *, packed: bool, row_tokens: int, prompt_loss_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """Tensors for one forward pass: input_ids, position_ids, targets, weights, learned (all [rows, width])."""
    groups = pack_rows([len(ids) for ids, _ in examples], row_tokens) if packed else [[i] for i in range(len(examples))]
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
    return batch


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float, int, int]:
    """(sum of weighted token losses, sum of weights, learned tokens, learned tokens predicted right).

    Logits are computed only at positions with a target (``logits_to_keep``), which spares the
    vocabulary projection wherever nothing is learned.
    """
    weights = batch["weights"]
    keep = (weights > 0).any(dim=0).nonzero().squeeze(1)
    # use_cache=False matters: with a cache transformers ignores packed position ids in the mask.
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=keep,
                   use_cache=False).logits
    weights, targets, learned = weights[:, keep], batch["targets"][:, keep], batch["learned"][:, keep]
    mask = weights > 0
    logits, targets, weights, learned = logits.float()[mask], targets[mask], weights[mask], learned[mask]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        correct = int((logits[learned].argmax(-1) == targets[learned]).sum())
    return (losses * weights).sum(), float(weights.sum()), int(learned.sum()), correct
