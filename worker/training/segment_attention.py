"""Attention over packed examples, one causal attention per example: no masked-out blocks computed.

A packed row holds several examples back to back. The generic way (a block-diagonal mask over the
whole row) makes SDPA compute every query-key block of the row and then mask most of them away,
and a mask also rules out SDPA's causal fast path. Here the row's examples are known
(``segment_lengths``, passed through the model's forward kwargs), so each example gets its own
``is_causal`` SDPA call on its slice of queries, keys and values: the cost is the sum of the squared
example lengths, not the row's length squared, and no token attends across examples.

Registered with transformers' attention interface as ``whetstone_segments``; any call without
segment lengths (padded batches, evaluation of pairs, sliding-window or soft-capped models) falls
through to transformers' own SDPA path with its mask, so the implementation is always correct.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "whetstone_segments"


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      segment_lengths: tuple[int, ...] | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``query`` [1, heads, tokens, dim], ``key``/``value`` [1, kv_heads, tokens, dim] -> [1, tokens, heads, dim]."""
    plain = (segment_lengths is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]
             or kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None
             or not getattr(module, "is_causal", True))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = key.shape[1] != query.shape[1]
    outputs, start = [], 0
    for n in segment_lengths:
        end = start + n
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], dropout_p=dropout,
            is_causal=True, scale=scaling, enable_gqa=gqa))
        start = end
    if start != query.shape[2]:
        raise ValueError(f"segment lengths add up to {start}, the row has {query.shape[2]} tokens")
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, segment_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # padded batches still get SDPA's mask


def use_segment_attention(model: Any) -> bool:
    """Switch ``model`` to per-example attention; False (model unchanged) where it cannot take it."""
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError, AttributeError):
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME
