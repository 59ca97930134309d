"""The output projection and the cross-entropy in one pass, a chunk of tokens at a time.

The plain way computes float32 logits for every kept token ([tokens, vocab]: 49,152 columns on
SmolLM2), keeps them for the backward pass, runs log-softmax over them, and in the backward pass
writes a gradient as large again. Here the loss and its gradient with respect to the hidden
states are computed together in the forward pass, ``chunk`` tokens at a time: per chunk the
logits, their log-sum-exp, each token's loss and predicted token, then ``softmax - one_hot``
(in place) times the projection's weight. Only ``[tokens, hidden]`` is kept for the backward pass,
which just scales it. This is what "fused linear cross-entropy" kernels (Liger, Apple's
cut-cross-entropy) do, in plain PyTorch.

It applies where the head is a frozen ``nn.Linear`` of a model whose logits are nothing more
(``fused_head`` says where; Gemma 2's soft-capping, Cohere's logit scale and the like take the
plain path), which is every LoRA / QLoRA / DoRA run on the Llama family.
"""

from __future__ import annotations

from typing import Any

import torch

from .data import IGNORE_INDEX

PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"}  # logits = lm_head(hidden)


def fused_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, frozen linear head) of a causal LM (PEFT-wrapped or not) whose logits are just the
    head's output; None where the plain path must run."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.requires_grad:
        return None
    return base.get_decoder(), head


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                token_weights: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        losses = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        predicted = torch.empty(n, dtype=torch.long, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            logits = torch.nn.functional.linear(hidden[start:end], weight, bias).float()
            target = targets[start:end]
            valid = target != IGNORE_INDEX
            safe = target.clamp(min=0).unsqueeze(1)
            lse = torch.logsumexp(logits, dim=1)
            losses[start:end] = torch.where(valid, lse - logits.gather(1, safe).squeeze(1), 0.0)
            predicted[start:end] = logits.argmax(dim=1)
            if grad is not None:  # d(sum w * loss)/d logits = w * (softmax - one_hot), then through the head
                probs = logits.sub_(lse.unsqueeze(1)).exp_()
                probs.scatter_add_(1, safe, torch.full_like(lse, -1.0).unsqueeze(1))
                probs.mul_((token_weights[start:end] * valid).unsqueeze(1))
                grad[start:end] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(predicted)
        return (losses * token_weights).sum(), predicted

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_predicted: Any):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                         token_weights: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over tokens of weight x cross-entropy of ``head(hidden)`` against ``targets``, predicted
    tokens). ``hidden`` [tokens, hidden_size]; ``targets`` -100 where there is none (loss 0)."""
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, token_weights.float(), chunk)
