"""Many LoRA adapters in one forward, with two small matmuls per layer for the whole batch.

PEFT's mixed-batch path (`adapter_names=`) loops over the adapters present, indexing each one's
rows out of the batch and back in: a few Python-level ops per adapter per layer. Here every
loaded adapter's A matrices are concatenated once ([slots*r, in]) and its B matrices, scaled,
likewise ([slots*r, out]); a step computes x @ A_all for all slots, zeroes the slots that are
not the row's own, and multiplies by B_all — the segmented-gather idea of Punica / S-LoRA
written with plain torch matmuls. The base forward runs with PEFT's adapters disabled and a
forward hook on each LoRA Linear adds the per-row delta. The same works on a bitsandbytes 4-bit
or 8-bit base (QLoRA): its LoRA layers wrap a quantized Linear, and the A/B matrices stay float.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StackedLora:
    def __init__(self, peft_model, device: torch.device) -> None:  # noqa: ANN001
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.peft = peft_model
        self.device = device
        self.plain = not any(getattr(m, "lora_embedding_A", None) for m in peft_model.modules())
        linear = _lora_linear_types()
        self.layers = [m for m in peft_model.modules() if isinstance(m, linear)]
        self.tuners = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]
        self.slots: list[str] = []
        self.stacks: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rank = 0
        self.select: torch.Tensor | None = None  # [rows, 1, slots, 1] one-hot while a forward runs
        self.dirty = True
        self._hooks = [layer.register_forward_hook(self._add_delta) for layer in self.layers]

    def supports(self, names: list[str]) -> bool:
        """Plain linear LoRA only (no DoRA, no embedding LoRA); anything else uses PEFT's path."""
        return self.plain and not any(getattr(self.peft.peft_config[n], "use_dora", False) for n in names)

    def _rebuild(self, names: list[str]) -> None:
        self.slots = list(names)
        self.rank = max((layer.r.get(n, 0) for layer in self.layers for n in names), default=0)
        self.stacks = {}
        for layer in self.layers:
            if not layer.lora_A:
                continue
            # The LoRA weights' dtype: a quantized base's own weight is packed integers.
            weight = next(iter(layer.lora_A.values())).weight
            a_all = weight.new_zeros(len(names) * self.rank, layer.in_features)
            b_all = weight.new_zeros(len(names) * self.rank, layer.out_features)
            for slot, name in enumerate(names):
                if name not in layer.lora_A:
                    continue
                r = layer.r[name]
                start = slot * self.rank
                a_all[start:start + r] = layer.lora_A[name].weight
                b_all[start:start + r] = (layer.lora_B[name].weight * layer.scaling[name]).T
            self.stacks[layer] = (a_all, b_all)
        self.dirty = False

    def forward(self, names: list[str], loaded: list[str], call):  # noqa: ANN001
        """Run `call()` (the base forward) with row i getting adapter names[i] ("__base__": none)."""
        if self.dirty or set(self.slots) != set(loaded):  # rows find their slot by name: order is free
            self._rebuild(loaded)
        index = {name: i for i, name in enumerate(self.slots)}
        select = torch.zeros(len(names), 1, len(self.slots), 1)
        for row, name in enumerate(names):
            if name in index:
                select[row, 0, index[name], 0] = 1.0
        self.select = select.to(self.device)
        try:
            with self.base_only():
                return call()
        finally:
            self.select = None

    @contextmanager
    def base_only(self) -> Iterator[None]:
        """PEFT's adapters off for one forward: the flag each tuner layer's forward reads, flipped on the
        layers found once. (`PeftModel.disable_adapter()` also walks every module for the model's status
        and resets requires_grad, per call: tens of milliseconds a step on a CPU.)"""
        before = [layer._disable_adapters for layer in self.tuners]
        for layer in self.tuners:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer, was in zip(self.tuners, before):
                layer._disable_adapters = was

    def _add_delta(self, module, args, output):  # noqa: ANN001
        if self.select is None or module not in self.stacks:
            return output
        a_all, b_all = self.stacks[module]
        x = args[0].to(a_all.dtype)
        rows, length = x.shape[0], x.shape[1]
        hidden = (x @ a_all.T).view(rows, length, len(self.slots), self.rank) * self.select.to(x.dtype)
        return output + (hidden.view(rows, length, -1) @ b_all).to(output.dtype)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _lora_linear_types() -> tuple[type, ...]:
    """PEFT's LoRA Linear and its bitsandbytes variants (present when bitsandbytes is installed)."""
    from peft.tuners.lora import bnb
    from peft.tuners.lora.layer import Linear

    return (Linear, *(t for t in (getattr(bnb, "Linear4bit", None), getattr(bnb, "Linear8bitLt", None)) if t))
