"""Learning-rate schedule and data order: pure functions of the step, the seed and the epoch."""

from __future__ import annotations

import math
import random


def lr_factor(step: int, warmup: int, total: int, kind: str = "linear") -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay (to 1/(total-warmup) at the last
    step), cosine decay (same end point), or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    remaining = (total - step) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 - math.cos(math.pi * remaining))
    return remaining


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order
