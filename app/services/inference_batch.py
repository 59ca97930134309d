"""Continuous batching over many LoRA adapters on one base model.

One scheduler per loaded base model, on its own thread. Between decoding steps it drops the
sequences that finished or were cancelled, admits waiting ones (their prompts prefilled together
in one left-padded forward, each row with its own adapter), then runs ONE forward for every
active sequence: each row feeds its last token, the rows' KV caches live in one left-padded batch
cache, and each row gets its own adapter's LoRA delta (`inference_lora.StackedLora`; PEFT's
`adapter_names=` sub-batches for DoRA) — the S-LoRA / Punica idea. Rows for the base model
("__base__") get no delta.

Adapters sit in an LRU of `inference_adapter_cache_size`; one used by an active sequence is
never evicted (a request for a new adapter waits until a slot frees).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict, deque
from pathlib import Path

import torch

from app.core.errors import public_reason
from app.core.safe_loading import check_adapter_dir, load_adapter
from app.services.inference_sampling import Sequence

log = logging.getLogger("whetstone.inference")
BASE = "__base__"
PREFILL_TOKENS = 8192  # padded prompt tokens prefilled in one forward (a longer prompt goes alone)


class QueueFull(Exception):
    pass


class BatchScheduler:
    def __init__(self, model, tokenizer, *, max_batch: int, max_queue: int, adapter_slots: int,
                 stacked_lora: bool = True) -> None:  # noqa: ANN001
        self.model = model
        self.tokenizer = tokenizer
        self.peft = None  # a PeftModel around `model` once the first adapter is loaded
        self.stacked = None  # StackedLora over the loaded adapters, for mixed batches
        self.stacked_lora = stacked_lora
        self.max_batch, self.max_queue, self.adapter_slots = max_batch, max_queue, max(1, adapter_slots)
        self.adapters: OrderedDict[Path, str] = OrderedDict()  # LRU: least recently used first
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id if model.generation_config else None
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.cache = None  # the batch's DynamicCache, rows in `active` order, left-padded
        self.mask: torch.Tensor | None = None  # [rows, cached length]: 1 real token, 0 padding
        self.evictions: set[Path] = set()
        self.steps = 0  # decoding steps run (a batch of any size counts once)
        self.prefills = 0  # prefill forwards run (each for one or more new sequences)
        self.mixed_steps = 0  # of which ran rows for more than one adapter (or adapter + base)
        self.peak_rows = 0
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="whetstone-inference", daemon=True)
        self._thread.start()

    # -- called from other threads -----------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> None:
        with self._cv:
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull
            self.waiting.extend(seqs)
            self._cv.notify()

    def evict(self, adapter: Path) -> None:
        with self._cv:
            self.evictions.add(adapter)
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def load(self) -> dict[str, int]:
        return {"active": len(self.active), "waiting": len(self.waiting), "adapters": len(self.adapters)}

    # -- the scheduler thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopped or self.active or self.waiting or self.evictions):
                    self._cv.wait()
                if self._stopped:
                    break
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # fail what is in flight, keep serving
                log.exception("inference step failed")
                for seq in self.active:
                    seq.fail(f"The server had an error while generating: {public_reason(exc)}")
                self.active, self.cache, self.mask = [], None, None
        for seq in [*self.active, *self.waiting]:
            if not seq.done:
                seq.fail("The inference engine is shutting down.")

    def _step(self) -> None:
        self._drop_finished()
        self._apply_evictions()
        self._admit()
        self._drop_finished()
        if self.active:
            self._decode()

    def _drop_finished(self) -> None:
        keep = [i for i, seq in enumerate(self.active) if not (seq.done or seq.cancelled)]
        if len(keep) == len(self.active):
            return
        self.active = [self.active[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).nonzero()[0])  # columns that are padding in every row go
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]

    def _apply_evictions(self) -> None:
        with self._cv:
            pending, self.evictions = self.evictions, set()
        in_use = {seq.adapter for seq in self.active}
        for path in pending:
            if path in in_use:
                with self._cv:
                    self.evictions.add(path)  # retry once its requests are done
            elif path in self.adapters:
                self._unload(path)

    def _admit(self) -> None:
        """Move waiting sequences into the batch (as many as fit, adapters permitting), prefilled together."""
        with self._cv:
            candidates = list(self.waiting)
        group: list[tuple[Sequence, str]] = []
        width = 0  # the group's padded prompt length
        for seq in candidates:
            if len(self.active) + len(group) >= self.max_batch:
                break
            if group and (len(group) + 1) * max(width, len(seq.prompt_ids)) > PREFILL_TOKENS:
                break  # the rest join at the next step
            if seq.cancelled:
                self._unqueue(seq)
                continue
            try:
                name = self._adapter_name(seq.adapter, busy={s.adapter for s, _ in group})
            except Exception as exc:  # unreadable adapter files
                self._unqueue(seq)
                log.exception("adapter %s could not be loaded", seq.adapter)
                seq.fail(f"The fine-tuned model's adapter could not be loaded: {public_reason(exc)}")
                continue
            if name is None:
                continue  # every adapter slot is in use; it waits
            self._unqueue(seq)
            group.append((seq, name))
            width = max(width, len(seq.prompt_ids))
        if not group:
            return
        try:
            self._prefill(group)
        except Exception as exc:
            log.exception("prefill failed")
            for seq, _ in group:
                seq.fail(f"The server had an error while generating: {public_reason(exc)}")

    def _unqueue(self, seq: Sequence) -> None:
        with self._cv:
            self.waiting.remove(seq)

    def _adapter_name(self, adapter: Path | None, busy: set[Path | None] = frozenset()) -> str | None:
        """The loaded adapter's name (loading it, evicting the least recently used one that neither
        the batch nor ``busy`` uses); None when every slot is in use."""
        if adapter is None:
            return BASE
        if adapter in self.adapters:
            self.adapters.move_to_end(adapter)
            return self.adapters[adapter]
        if len(self.adapters) >= self.adapter_slots:
            in_use = {seq.adapter for seq in self.active} | busy
            victim = next((p for p in self.adapters if p not in in_use), None)
            if victim is None:
                return None
            self._unload(victim)
        name = "a" + hashlib.sha1(str(adapter).encode()).hexdigest()[:16]
        check_adapter_dir(adapter)  # safetensors only: PEFT would unpickle an adapter_model.bin
        if self.peft is None:
            self.peft = load_adapter(self.model, adapter, adapter_name=name)
        else:
            self.peft.load_adapter(str(adapter), adapter_name=name)
        self.peft.eval()
        self.peft.set_adapter(name)  # PEFT wants an active adapter; rows pick theirs by name anyway
        self.adapters[adapter] = name
        self._restack()
        return name

    def _restack(self) -> None:
        from app.services.inference_lora import StackedLora

        if self.stacked is not None:
            self.stacked.close()
        self.stacked = StackedLora(self.peft, self.device) if self.stacked_lora else None

    def _unload(self, adapter: Path) -> None:
        self.peft.delete_adapter(self.adapters.pop(adapter))
        if self.adapters:
            self.peft.set_adapter(next(iter(self.adapters.values())))
        self._restack()

    def _forward(self, names: list[str], **inputs):
        if self.peft is None or not self.adapters:  # no adapter loaded (any more): the base alone
            return self.model(**inputs, use_cache=True)
        loaded = list(self.adapters.values())
        if self.stacked is not None and self.stacked.supports(loaded):  # any mix of adapters and the base
            return self.stacked.forward(names, loaded, lambda: self.peft(**inputs, use_cache=True))
        if len(set(names)) > 1:  # rows for different adapters
            return self.peft(**inputs, use_cache=True, adapter_names=names)  # PEFT's per-adapter sub-batches
        if names[0] == BASE:
            with self.peft.disable_adapter():
                return self.peft(**inputs, use_cache=True)
        self.peft.set_adapter(names[0])  # one adapter for every row: the plain LoRA forward
        return self.peft(**inputs, use_cache=True)

    def _names(self, seqs: list[Sequence]) -> list[str]:
        return [self.adapters[s.adapter] if s.adapter is not None else BASE for s in seqs]

    def _prefill(self, group: list[tuple[Sequence, str]]) -> None:
        """One forward over the new sequences' prompts (left-padded, each row with its own adapter and
        position ids from 0), their first tokens chosen, their caches joined to the batch's."""
        seqs = [seq for seq, _ in group]
        width = max(len(seq.prompt_ids) for seq in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        positions = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            n = len(seq.prompt_ids)
            ids[row, width - n:] = torch.tensor(seq.prompt_ids)
            mask[row, width - n:] = 1
            positions[row, width - n:] = torch.arange(n)
        mask = mask.to(self.device)
        # The next token needs the last position's logits only; prompt logprobs (echo) need them all.
        keep = {} if any(seq.options.prompt_logprobs for seq in seqs) else {"logits_to_keep": 1}
        out = self._forward([name for _, name in group], input_ids=ids.to(self.device), attention_mask=mask,
                            position_ids=positions.to(self.device), **keep)
        self.prefills += 1
        for row, seq in enumerate(seqs):
            if seq.options.prompt_logprobs:
                seq.score_prompt(out.logits[row, width - len(seq.prompt_ids):], self.tokenizer)
            seq.accept(seq.choose(out.logits[row, -1], self.tokenizer), self.eos_ids, self.tokenizer)
        self._join(seqs, out.past_key_values, mask)  # rows already done leave at the next _drop_finished

    def _join(self, seqs: list[Sequence], cache, mask: torch.Tensor) -> None:  # noqa: ANN001
        """Add prefilled rows to the batch cache, left-padding whichever side is shorter."""
        self.active.extend(seqs)
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])

    def _decode(self) -> None:
        rows = self.active
        ids = torch.tensor([[seq.next_input] for seq in rows], device=self.device)
        positions = torch.tensor([[seq.position] for seq in rows], device=self.device)
        mask = torch.cat([self.mask, torch.ones(len(rows), 1, dtype=self.mask.dtype, device=self.device)], dim=1)
        names = self._names(rows)
        out = self._forward(names, input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=self.cache)
        self.cache, self.mask = out.past_key_values, mask
        self.steps += 1
        self.mixed_steps += len({seq.adapter for seq in rows}) > 1
        self.peak_rows = max(self.peak_rows, len(rows))
        logits = out.logits[:, -1]
        for i, seq in enumerate(rows):
            seq.position += 1
            if not seq.cancelled:
                seq.accept(seq.choose(logits[i], self.tokenizer), self.eos_ids, self.tokenizer)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dimension -1 (a mask) or -2 (keys/values) on the left with zeros up to `width`."""
    dim = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
