"""Packed batches: correct boundaries (an example's loss is the same packed or alone), and loss
weights (masked prompt tokens carry no gradient unless prompt_loss_weight says so)."""

import pytest
import torch

from worker.training import IGNORE_INDEX, load_base_model, make_batch, pack_rows, tokenize_example
from worker.training.batching import batch_loss

from .toy_data import pirate_chat_examples


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_base_model(tiny_model_dir, "cpu")
    return model.eval(), tokenizer


def examples(tokenizer, n, seed=3):
    return [tuple(tokenize_example(tokenizer, e, 1024)[:2]) for e in pirate_chat_examples(n, seed=seed)]


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2], row_tokens=8) == [[0, 1], [2, 3]]
    assert pack_rows([9, 1], row_tokens=8) == [[0], [1]]  # too long for a row: a row of its own


def test_packed_batch_layout():
    batch = make_batch([([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4, 5], [IGNORE_INDEX, 5])], 0, packed=True, row_tokens=8)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]  # restart per example
    # targets are the next token of the same example; none across the boundary (3 -> 4)
    assert batch["targets"].tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]]
    assert batch["weights"].tolist() == [[1, 1, 0, 1, 0]]
    padded = make_batch([([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4, 5], [IGNORE_INDEX, 5])], 0, packed=False, row_tokens=8)
    assert padded["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert padded["weights"].tolist() == [[1, 1, 0], [1, 0, 0]]


@torch.no_grad()
def test_example_loss_is_the_same_packed_or_alone(tiny):
    model, tokenizer = tiny
    data = examples(tokenizer, 4)
    alone = [batch_loss(model, make_batch([e], 0, packed=True, row_tokens=4096))[0].item() for e in data]
    batch = make_batch(data, 0, packed=True, row_tokens=4096)
    assert batch["input_ids"].shape[0] == 1  # all four in one row
    packed_sum = batch_loss(model, batch)[0].item()
    assert packed_sum == pytest.approx(sum(alone), rel=1e-5)
    # Without the restarting position ids (one long sequence) the same row gives another loss:
    # the test would catch attention or positions leaking across examples.
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).unsqueeze(0))
    assert batch_loss(model, leaky)[0].item() != pytest.approx(sum(alone), rel=1e-3)
    padded = batch_loss(model, make_batch(data, 0, packed=False, row_tokens=4096))[0].item()
    assert padded == pytest.approx(sum(alone), rel=1e-5)


def final_hidden_grad(model, batch):
    """Gradient of the loss with respect to the last hidden state (what the LM head sees)."""
    captured = {}

    def hook(module, args, output):
        output.retain_grad()
        captured["h"] = output

    handle = model.model.norm.register_forward_hook(hook)
    try:
        loss, weight, _, _ = batch_loss(model, batch)
        (loss / weight).backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return captured["h"].grad[0].abs().sum(-1)  # one number per position


@pytest.mark.parametrize("example", [
    pirate_chat_examples(1, seed=5)[0],
    {"prompt": "Translate to French: cheese ->", "completion": " fromage"},
])
def test_masked_prompt_tokens_carry_no_gradient(tiny, example):
    model, tokenizer = tiny
    ids, labels, _, _ = tokenize_example(tokenizer, example, 1024)
    learned_next = [label != IGNORE_INDEX for label in labels[1:]] + [False]  # does position i predict a learned token?

    grad = final_hidden_grad(model, make_batch([(ids, labels)], 0, packed=True, row_tokens=4096))
    assert all((g > 0) == learned for g, learned in zip(grad.tolist(), learned_next))
    assert sum(learned_next) < len(ids) - 1  # there are prompt positions, and they got exactly zero

    with_prompt = final_hidden_grad(model, make_batch([(ids, labels)], 0, packed=True, row_tokens=4096,
                                                      prompt_loss_weight=0.1))
    assert all(g > 0 for g in with_prompt[:-1].tolist())  # prompt_loss_weight > 0: the prompt is learned too
