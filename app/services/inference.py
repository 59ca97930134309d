"""The embedded inference engine: one copy of each base model in memory, fine-tuned LoRA
adapters loaded on it on demand, and a token-by-token decoding loop.

The lock is held for one decoding step at a time, so concurrent requests (for different
adapters too) interleave step by step and a client that goes away releases nothing late.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from app.core.config import Settings
from app.services.base_models import ensure_base_model
from app.services.models import ModelTarget


@dataclass
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Delta:
    """A piece of generated text; the last one carries finish_reason and the token counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _LoadedBase:
    def __init__(self, path: Path) -> None:
        from worker.training.model_loading import load_base_model

        self.model, self.tokenizer = load_base_model(path, "auto")
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.peft = None  # becomes a PeftModel wrapping self.model once an adapter is loaded
        self.adapters: dict[Path, str] = {}
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = ids
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))

    def activate(self, adapter: Path | None):
        """Make `adapter` (or none) the active one; returns the module to call and a context."""
        if adapter is None:
            return (self.peft or self.model), (self.peft.disable_adapter() if self.peft else nullcontext())
        name = self.adapters.get(adapter)
        if name is None:
            from peft import PeftModel

            name = "a" + hashlib.sha1(str(adapter).encode()).hexdigest()[:16]
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(adapter), adapter_name=name)
            else:
                self.peft.load_adapter(str(adapter), adapter_name=name)
            self.peft.eval()
            self.adapters[adapter] = name
        self.peft.set_adapter(name)
        return self.peft, nullcontext()


class InferenceEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._bases: dict[str, _LoadedBase] = {}

    def _base(self, name: str) -> _LoadedBase:
        with self._lock:
            if name not in self._bases:
                self._bases[name] = _LoadedBase(ensure_base_model(self.settings, name))
            return self._bases[name]

    def tokenizer(self, target: ModelTarget):
        return self._base(target.base_model).tokenizer

    def context_length(self, target: ModelTarget) -> int:
        return self._base(target.base_model).context_length

    def chat_prompt_ids(self, target: ModelTarget, messages: list[dict[str, str]]) -> list[int]:
        tokenizer = self.tokenizer(target)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)

    def text_prompt_ids(self, target: ModelTarget, prompt: str) -> list[int]:
        tokenizer = self.tokenizer(target)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        # An empty prompt starts from the beginning-of-text token, as OpenAI's models do.
        return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]

    def stream(self, target: ModelTarget, prompt_ids: list[int], options: SamplingOptions) -> Iterator[Delta]:
        """Yield text deltas; the last Delta has finish_reason ("stop" or "length") and usage."""
        base = self._base(target.base_model)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(options.seed if options.seed is not None else random.randrange(2**63))
        tokens: list[int] = []
        past = None
        next_input = torch.tensor([prompt_ids], device=base.device)
        sent = ""  # text already yielded
        text = ""
        hold = max((len(s) for s in options.stop), default=1) - 1
        finish = "length"
        for _ in range(options.max_tokens):
            with self._lock:
                module, ctx = base.activate(target.adapter_path)
                with ctx, torch.inference_mode():
                    out = module(input_ids=next_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = _sample(out.logits[0, -1].float(), options, generator)
            if token in base.eos_ids:
                finish = "stop"
                break
            tokens.append(token)
            next_input = torch.tensor([[token]], device=base.device)
            text = base.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = _first_stop(text, options.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
                break
            # Hold back what may be the start of a stop string or a half-decoded character.
            ready = len(text) - hold if options.stop else len(text)
            if text.endswith("\ufffd"):
                ready = min(ready, len(text) - 1)
            if ready > len(sent):
                yield Delta(text[len(sent):ready])
                sent = text[:ready]
        yield Delta(text[len(sent):], finish, len(prompt_ids), len(tokens))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> int:
    if options.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
