"""The inference engine: each base model loaded once (in the background, so a request can be
told "still loading"), with one continuous-batching scheduler that serves the base model and
its fine-tuned LoRA adapters together (see inference_batch.py).

A base is loaded per (name, quantization): QLoRA adapters — trained on a base loaded in 4-bit
NF4 or 8-bit by bitsandbytes — are served on a base loaded the same way, next to the
full-precision one that serves the base model itself and plain LoRA adapters. The quantized
copy is loaded the first time one of its adapters is asked for.

Requests go in with `generate` (async, for the API) or `generate_sync` (a plain iterator);
leaving either early — a client that disconnects — cancels the sequences, and the scheduler
drops them before its next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from app.core import metrics
from app.core.config import Settings
from app.core.errors import APIError, public_reason
from app.services.base_models import ensure_base_model
from app.services.inference_batch import BatchScheduler, QueueFull
from app.services.inference_sampling import Delta, SamplingOptions, Sequence
from app.services.models import ModelTarget

__all__ = ["Delta", "InferenceEngine", "SamplingOptions"]
_LOAD_LOCK = threading.Lock()


class InferenceEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], concurrent.futures.Future] = {}

    # -- base models -------------------------------------------------------------------------
    def _future(self, name: str, quantization: str) -> concurrent.futures.Future:
        with self._lock:
            future = self._loading.get((name, quantization))
            if future is None or (future.done() and future.exception() is not None):
                future = concurrent.futures.Future()
                self._loading[(name, quantization)] = future
                threading.Thread(target=self._load, args=(name, quantization, future), daemon=True,
                                 name=f"whetstone-load-{name}-{quantization}").start()
            return future

    def _load(self, name: str, quantization: str, future: concurrent.futures.Future) -> None:
        try:
            from worker.training.model_loading import load_base_model

            directory = ensure_base_model(self.settings, name)
            # One load at a time: from_pretrained builds the model on the meta device through
            # process-wide patches, and two loads in parallel threads trip over each other's.
            with _LOAD_LOCK:
                model, tokenizer = load_base_model(directory, "auto", quantization)
            model.eval()
            s = self.settings
            future.set_result(BatchScheduler(model, tokenizer, max_batch=s.inference_max_batch_size,
                                             max_queue=s.inference_max_queue,
                                             adapter_slots=s.inference_adapter_cache_size))
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            future.set_exception(exc)

    @staticmethod
    def _what(name: str, quantization: str) -> str:
        return f"'{name}'" if quantization == "none" else f"'{name}' ({quantization}, as its adapter was trained)"

    def _loading_error(self, name: str, quantization: str) -> APIError:
        wait = max(1, math.ceil(self.settings.inference_load_wait_seconds) or 5)
        return APIError(503, f"The model {self._what(name, quantization)} is currently loading. Please retry your "
                             "request in a few seconds.", type="server_error", code="model_loading",
                        headers={"Retry-After": str(wait)})

    def _failed(self, name: str, quantization: str, exc: BaseException) -> APIError:
        return APIError(500, f"The model {self._what(name, quantization)} could not be loaded: {public_reason(exc)}",
                        type="server_error", code="model_load_failed")

    def scheduler(self, name: str, wait: float | None = None, quantization: str = "none") -> BatchScheduler:
        """The scheduler of base `name` loaded with `quantization`; waits up to `wait` seconds, then 503."""
        future = self._future(name, quantization)
        try:
            return future.result(timeout=self.settings.inference_load_wait_seconds if wait is None else wait)
        except concurrent.futures.TimeoutError:
            raise self._loading_error(name, quantization) from None
        except Exception as exc:
            raise self._failed(name, quantization, exc) from exc

    async def ascheduler(self, name: str, quantization: str = "none") -> BatchScheduler:
        future = self._future(name, quantization)
        if future.done():
            return self.scheduler(name, wait=0, quantization=quantization)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                          self.settings.inference_load_wait_seconds)
        except TimeoutError:
            raise self._loading_error(name, quantization) from None
        except Exception as exc:
            raise self._failed(name, quantization, exc) from exc

    def scheduler_for(self, target: ModelTarget, wait: float | None = None) -> BatchScheduler:
        """The scheduler that serves `target`: its base, loaded as its adapter was trained."""
        return self.scheduler(target.base_model, wait, target.quantization)

    async def ascheduler_for(self, target: ModelTarget) -> BatchScheduler:
        return await self.ascheduler(target.base_model, target.quantization)

    def loaded(self) -> list[BatchScheduler]:
        with self._lock:
            futures = list(self._loading.values())
        return [f.result() for f in futures if f.done() and f.exception() is None]

    # -- prompts -----------------------------------------------------------------------------
    @staticmethod
    def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:  # noqa: ANN001
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)

    @staticmethod
    def text_prompt_ids(tokenizer, prompt: str | list[int]) -> list[int]:  # noqa: ANN001
        if isinstance(prompt, list):
            return prompt
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        # An empty prompt starts from the beginning-of-text token, as OpenAI's models do.
        return ids or [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]

    # -- generation --------------------------------------------------------------------------
    def _submit(self, scheduler: BatchScheduler, target: ModelTarget,
                jobs: list[tuple[list[int], SamplingOptions]], sink) -> list[Sequence]:  # noqa: ANN001
        if target.adapter_path is not None:
            metrics.record_adapter_lookup(target.adapter_path in scheduler.adapters)
        started = time.perf_counter()

        def counted(delta: Delta) -> None:  # on the scheduler thread
            if delta.finish_reason is not None and delta.error is None:
                metrics.record_generation(target.base_model, delta.prompt_tokens, delta.completion_tokens,
                                          time.perf_counter() - started)
            sink(delta)

        seqs = [Sequence(i, ids, options, target.adapter_path, counted) for i, (ids, options) in enumerate(jobs)]
        try:
            scheduler.submit(seqs)
        except QueueFull:
            raise APIError(429, "The server is handling too many requests right now. Please retry shortly.",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        return seqs

    async def generate(self, target: ModelTarget, jobs: list[tuple[list[int], SamplingOptions]]) -> AsyncIterator[Delta]:
        """Deltas of every job (Delta.index = its position in `jobs`) as they come; closing the
        iterator early cancels whatever is still generating. Raises 429 / 503 before the first."""
        scheduler = await self.ascheduler_for(target)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[Delta] = asyncio.Queue()

        def sink(delta: Delta) -> None:
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, delta)
            except RuntimeError:  # its event loop has ended: the consumer is gone, nothing to tell
                pass

        seqs = self._submit(scheduler, target, jobs, sink)
        return self._drain(deltas, seqs, scheduler)

    @staticmethod
    async def _drain(deltas: asyncio.Queue, seqs: list[Sequence], scheduler: BatchScheduler) -> AsyncIterator[Delta]:
        remaining = len(seqs)
        try:
            while remaining:
                delta = await deltas.get()
                if delta.finish_reason is not None or delta.error is not None:
                    remaining -= 1
                yield delta
        finally:
            if remaining:
                for seq in seqs:
                    seq.cancelled = True
                scheduler.wake()

    def generate_sync(self, target: ModelTarget, prompt_ids: list[int], options: SamplingOptions) -> Iterator[Delta]:
        scheduler = self.scheduler_for(target)
        deltas: queue.SimpleQueue[Delta] = queue.SimpleQueue()
        seqs = self._submit(scheduler, target, [(prompt_ids, options)], deltas.put)
        try:
            while True:
                delta = deltas.get()
                yield delta
                if delta.finish_reason is not None or delta.error is not None:
                    return
        finally:
            seqs[0].cancelled = True

    def evict(self, adapter: Path) -> None:
        """Unload a deleted fine-tune's adapter from every base model (once no request uses it)."""
        for scheduler in self.loaded():
            scheduler.evict(adapter)

    def close(self) -> None:
        for scheduler in self.loaded():
            scheduler.stop()
