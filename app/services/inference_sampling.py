"""One generated sequence: its sampling knobs, how its next token is chosen, and how its tokens
become text deltas (stop strings, held-back partial characters, finish_reason, usage).

Pure per-sequence logic; the batching scheduler (inference_batch.py) owns the model calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None: no log probabilities; k >= 0: the chosen token's and the k most likely alternatives'.
    logprobs: int | None = None
    # Also score the prompt's tokens (completions with echo and logprobs).
    prompt_logprobs: bool = False


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None only for a prompt's first token, which nothing predicts
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """A piece of generated text for choice `index`; the last one carries finish_reason and the
    token counts. `error` is set (and nothing else matters) when the engine failed the sequence."""

    index: int
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    error: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first delta, when asked for


class Sequence:
    """A request for one choice, from the queue to its last token. Touched only by the scheduler
    thread, except `cancelled`, which any thread may set."""

    def __init__(self, index: int, prompt_ids: list[int], options: SamplingOptions, adapter: Path | None,
                 sink: Callable[[Delta], None]) -> None:
        self.index = index
        self.prompt_ids = prompt_ids
        self.options = options
        self.adapter = adapter
        self.sink = sink
        self.cancelled = False
        self.done = False
        self.tokens: list[int] = []
        self.counts: dict[int, int] = {}
        self.pending: list[TokenLogprob] = []
        self.prompt_items: list[TokenLogprob] | None = None
        self.sent = ""
        self.next_input: int | None = None  # the token to feed at the next decoding step
        self.position = len(prompt_ids)  # its position id (= real tokens in the KV cache)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(options.seed + index if options.seed is not None else random.randrange(2**63))

    def score_prompt(self, logits: torch.Tensor, tokenizer) -> None:  # noqa: ANN001
        """Log probabilities of the prompt's tokens, from the prefill's logits ([len, vocab])."""
        logp = torch.log_softmax(logits[:-1].float(), dim=-1)
        ids = self.prompt_ids
        self.prompt_items = [TokenLogprob(tokenizer.decode([ids[0]]), None)]
        for i, token in enumerate(ids[1:]):
            self.prompt_items.append(TokenLogprob(tokenizer.decode([token]), float(logp[i, token]),
                                                  self._top(logp[i], tokenizer)))

    def _top(self, logp: torch.Tensor, tokenizer) -> list[tuple[str, float]]:  # noqa: ANN001
        if not self.options.logprobs:
            return []
        values, ids = torch.topk(logp, self.options.logprobs)
        return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]

    # -- choosing a token ------------------------------------------------------------------
    def choose(self, logits: torch.Tensor, tokenizer) -> int:  # noqa: ANN001
        opts = self.options
        logits = logits.float()
        if self.counts and (opts.presence_penalty or opts.frequency_penalty):
            ids = torch.tensor(list(self.counts), device=logits.device)
            counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype, device=logits.device)
            logits = logits.clone()
            logits[ids] -= counts * opts.frequency_penalty + opts.presence_penalty
        if opts.temperature == 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / opts.temperature, dim=-1)
            if opts.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < opts.top_p
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
            token = int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
        if opts.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
            self.pending.append(TokenLogprob(tokenizer.decode([token]), float(logp[token]),
                                             self._top(logp, tokenizer)))
        return token

    # -- turning tokens into deltas ----------------------------------------------------------
    def accept(self, token: int, eos_ids: set[int], tokenizer) -> None:  # noqa: ANN001
        """Record `token`; emit what text is ready; finish on end token, stop string or length."""
        if token in eos_ids:
            self.pending.clear()
            self.finish("stop", self.text(tokenizer))
            return
        self.tokens.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        self.next_input = token
        text = self.text(tokenizer)
        stops = self.options.stop
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            self.finish("stop", text[: min(hits)])
            return
        if len(self.tokens) >= self.options.max_tokens:
            self.finish("length", text)
            return
        # Hold back what may be the start of a stop string or a half-decoded character.
        ready = len(text) - (max(len(s) for s in stops) - 1) if stops else len(text)
        if text.endswith("\ufffd"):
            ready = min(ready, len(text) - 1)
        if ready > len(self.sent):
            self._emit(Delta(self.index, text[len(self.sent):ready], logprobs=self._take_pending()))
            self.sent = text[:ready]

    def text(self, tokenizer) -> str:  # noqa: ANN001
        return tokenizer.decode(self.tokens, skip_special_tokens=True)

    def finish(self, reason: str, text: str) -> None:
        self.done = True
        rest = text[len(self.sent):] if text.startswith(self.sent) else ""
        logprobs = self._take_pending()
        if reason == "stop" and self.options.logprobs is not None:
            # Drop the log probabilities of tokens past a stop string (they are not in the text).
            room = len(text) - len(self.sent)
            kept = []
            for item in logprobs:
                if room <= 0:
                    break
                kept.append(item)
                room -= len(item.token)
            logprobs = kept
        self._emit(Delta(self.index, rest, reason, len(self.prompt_ids), len(self.tokens), logprobs))

    def fail(self, message: str) -> None:
        self.done = True
        self.sink(Delta(self.index, "", error=message))

    def _emit(self, delta: Delta) -> None:
        if self.prompt_items is not None:
            delta.prompt_logprobs, self.prompt_items = self.prompt_items, None
        self.sink(delta)

    def _take_pending(self) -> list[TokenLogprob]:
        pending, self.pending = self.pending, []
        return pending
