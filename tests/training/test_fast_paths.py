"""The trainer's fast paths give the plain paths' results: per-example (segment) attention over a
packed row, the fused head + cross-entropy, and LoRA dropout with the cheaper CPU mask."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from worker.training import load_base_model, make_batch, tokenize_example
from worker.training import batching
from worker.training.batching import batch_loss
from worker.training.fused_loss import fused_head, linear_cross_entropy
from worker.training.lora_dropout import FastDropout, use_fast_dropout
from worker.training.segment_attention import use_segment_attention

from .toy_data import pirate_chat_examples


@pytest.fixture(scope="module")
def segmented(tiny_model_dir):
    model, tokenizer = load_base_model(tiny_model_dir, "cpu")
    assert use_segment_attention(model)
    return model.eval(), tokenizer


def examples(tokenizer, n, seed=3):
    return [tuple(tokenize_example(tokenizer, e, 1024)[:2]) for e in pirate_chat_examples(n, seed=seed)]


@torch.no_grad()
def test_segment_attention_gives_each_example_its_own_logits(segmented):
    model, tokenizer = segmented
    data = examples(tokenizer, 4)
    batch = make_batch(data, 0, packed=True, row_tokens=0, segments=True)
    assert batch["input_ids"].shape[0] == 1 and batch["segment_lengths"].tolist() == [len(ids) for ids, _ in data]
    row = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                segment_lengths=tuple(batch["segment_lengths"].tolist())).logits[0]
    alone = torch.cat([model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids, _ in data])
    torch.testing.assert_close(row, alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_segment_lengths_decide_what_attends_to_what(segmented):
    model, tokenizer = segmented
    data = examples(tokenizer, 3)
    alone = sum(batch_loss(model, make_batch([e], 0, packed=True, row_tokens=0, segments=True))[0].item()
                for e in data)
    batch = make_batch(data, 0, packed=True, row_tokens=0, segments=True)
    assert batch_loss(model, batch)[0].item() == pytest.approx(alone, rel=1e-5)
    # One segment over the whole row: later examples see earlier ones, and the loss changes.
    one = dict(batch, segment_lengths=torch.tensor([int(batch["segment_lengths"].sum())]))
    assert batch_loss(model, one)[0].item() != pytest.approx(alone, rel=1e-3)
    short = dict(batch, segment_lengths=batch["segment_lengths"][:-1])
    with pytest.raises(ValueError, match="segment lengths add up to"):
        batch_loss(model, short)
    # Padded rows (no segments) take SDPA with its mask on the same model: same losses.
    padded = make_batch(data, 0, packed=False, row_tokens=0)
    assert batch_loss(model, padded)[0].item() == pytest.approx(alone, rel=1e-5)


def test_fused_cross_entropy_equals_the_plain_one():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).requires_grad_(False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[[0, 5, 36]] = -100
    weights = torch.rand(37)
    weights[[0, 5, 36]] = 0.0
    loss, predicted = linear_cross_entropy(hidden, head, targets, weights, chunk=8)  # five chunks, the last short
    loss.backward()
    fused_grad, hidden.grad = hidden.grad, None
    logits = head(hidden)
    plain = (torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="none") * weights).sum()
    plain.backward()
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(fused_grad, hidden.grad)
    assert predicted.tolist() == logits.argmax(-1).tolist()


def test_batch_loss_fused_and_plain_give_the_same_loss_accuracy_and_gradients(tiny_model_dir, monkeypatch):
    model, tokenizer = load_base_model(tiny_model_dir, "cpu")
    model.requires_grad_(False)
    layer = model.model.layers[0]
    layer.requires_grad_(True)
    assert fused_head(model) is not None
    batch = make_batch(examples(tokenizer, 3), 0, packed=True, row_tokens=4096, prompt_loss_weight=0.3)

    def run():
        stats = {}
        loss, weight, learned, correct = batch_loss(model, batch, stats)
        loss.backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        model.zero_grad(set_to_none=True)
        return loss.item(), weight, learned, correct, stats, grads

    fused = run()
    monkeypatch.setattr(batching, "fused_head", lambda model: None)
    plain = run()
    assert fused[0] == pytest.approx(plain[0], rel=1e-6)
    assert fused[1:5] == plain[1:5]
    for a, b in zip(fused[5], plain[5]):  # (float32, summed in another order: a few 1e-6 apart on AVX-512)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    model.lm_head.weight.requires_grad_(True)  # a trained head: the plain path, which gives it a gradient
    assert fused_head(model) is None


def test_fast_dropout_drops_at_rate_p_and_scales_the_rest():
    torch.manual_seed(0)
    dropout = FastDropout(0.1).train()
    out = dropout(torch.ones(1000, 1000))
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.002)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.9))
    rows = (out == 0).float().mean(dim=1)  # independent elements: every row near p too
    assert rows.min() > 0.06 and rows.max() < 0.14
    torch.manual_seed(0)
    assert torch.equal(dropout(torch.ones(1000, 1000)), out)  # the seeded generator: reproducible
    assert not torch.equal(dropout(torch.ones(1000, 1000)), out)
    x = torch.randn(4, 4)
    assert dropout.eval()(x) is x


def test_every_lora_dropout_is_replaced(tiny_model_dir):
    model, _ = load_base_model(tiny_model_dir, "cpu")
    n_layers = model.config.num_hidden_layers
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    assert use_fast_dropout(peft) == 2 * n_layers
    assert not any(type(m) is torch.nn.Dropout for m in peft.modules() if m is not None)
    model, _ = load_base_model(tiny_model_dir, "cpu")
    none = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"]))
    assert use_fast_dropout(none) == 0  # p = 0: PEFT's Identity stays
