"""Completions and chat completions on top of the engine, in OpenAI's shapes.

Every (prompt, choice) pair is one sequence in the engine's batch; `n` choices of one prompt
get seeds seed, seed+1, ... so they differ and still repeat."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from app.core.errors import APIError, error_body, invalid
from app.core.ids import new_id, now
from app.protocol.completions import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatDelta, ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, SamplingParams,
    TokenLogprob as WireTokenLogprob, TopLogprob, Usage,
)
from app.services.event_stream import sse
from app.services.inference import Delta, InferenceEngine, SamplingOptions
from app.services.inference_sampling import TokenLogprob
from app.services.models import ModelTarget


def _options(params: SamplingParams, max_tokens: int, logprobs: int | None, prompt_logprobs: bool = False) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=params.temperature, top_p=params.top_p,
                           stop=tuple(params.stop_list()), seed=params.seed,
                           presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
                           logprobs=logprobs, prompt_logprobs=prompt_logprobs)


def _budget(context_length: int, prompt_ids: list[int], max_tokens: int, param: str) -> int:
    if len(prompt_ids) >= context_length:
        raise invalid(f"This model's maximum context length is {context_length} tokens, but the prompt has "
                      f"{len(prompt_ids)} tokens.", param=param, code="context_length_exceeded")
    return min(max_tokens, context_length - len(prompt_ids))


def _context_length(scheduler) -> int:  # noqa: ANN001
    return int(getattr(scheduler.model.config, "max_position_embeddings", 2048))


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _raise_if_failed(delta: Delta) -> None:
    if delta.error is not None:
        raise APIError(500, delta.error, type="server_error")


def _sse_error(delta: Delta) -> str:
    return sse(json.dumps(error_body(delta.error or "generation failed", "server_error")))


class _Choices:
    """Text, log probabilities and the final delta per choice index."""

    def __init__(self, count: int) -> None:
        self.text = [""] * count
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(count)]
        self.last: list[Delta | None] = [None] * count

    def add(self, delta: Delta) -> None:
        _raise_if_failed(delta)
        self.text[delta.index] += delta.text
        self.logprobs[delta.index] += (delta.prompt_logprobs or []) + delta.logprobs
        if delta.finish_reason is not None:
            self.last[delta.index] = delta

    def completion_tokens(self) -> int:
        return sum(d.completion_tokens for d in self.last if d is not None)


# -- /v1/completions ---------------------------------------------------------------------------

def _completion_logprobs(items: list[TokenLogprob], start: int) -> CompletionLogprobs:
    offsets, at = [], start
    for item in items:
        offsets.append(at)
        at += len(item.token)
    return CompletionLogprobs(tokens=[i.token for i in items], token_logprobs=[i.logprob for i in items],
                              top_logprobs=[dict(i.top) if i.logprob is not None else None for i in items],
                              text_offset=offsets)


async def complete(engine: InferenceEngine, target: ModelTarget, request: CompletionRequest) -> Completion | AsyncIterator[str]:
    scheduler = await engine.ascheduler_for(target)
    tokenizer = scheduler.tokenizer
    prompt = request.prompt
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    if not prompts:
        raise invalid("'prompt' must not be empty", param="prompt")
    encoded = [engine.text_prompt_ids(tokenizer, p) for p in prompts]
    limit = _context_length(scheduler)
    n = request.n
    jobs = [(ids, _options(request, _budget(limit, ids, request.max_tokens or 16, "prompt"), request.logprobs,
                           request.echo and request.logprobs is not None))
            for ids in encoded for _ in range(n)]
    echoes = [tokenizer.decode(ids, skip_special_tokens=True) if request.echo else "" for ids in encoded for _ in range(n)]
    prompt_tokens = sum(len(ids) for ids in encoded)
    completion_id, created = new_id("cmpl"), now()
    deltas = await engine.generate(target, jobs)
    if request.stream:
        return _stream_completion(deltas, target, request, echoes, prompt_tokens, completion_id, created)
    choices = _Choices(len(jobs))
    async for delta in deltas:
        choices.add(delta)
    return Completion(
        id=completion_id, created=created, model=target.model_id,
        choices=[CompletionChoice(text=echoes[i] + choices.text[i], index=i, finish_reason=choices.last[i].finish_reason,
                                  logprobs=_completion_logprobs(choices.logprobs[i], 0)
                                  if request.logprobs is not None else None)
                 for i in range(len(jobs))],
        usage=_usage(prompt_tokens, choices.completion_tokens()))


async def _stream_completion(deltas: AsyncIterator[Delta], target: ModelTarget, request: CompletionRequest,
                             echoes: list[str], prompt_tokens: int, completion_id: str, created: int) -> AsyncIterator[str]:
    include_usage = request.include_usage
    started = [False] * len(echoes)
    offsets = [0] * len(echoes)
    completion_tokens = 0

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        body = Completion(id=completion_id, created=created, model=target.model_id, choices=choices, usage=usage)
        return sse(body.model_dump_json(exclude=None if include_usage else {"usage"}))

    async for delta in deltas:
        if delta.error is not None:
            yield _sse_error(delta)
            return
        i = delta.index
        text = delta.text if started[i] else echoes[i] + delta.text
        logprobs = None
        if request.logprobs is not None:
            items = (delta.prompt_logprobs or []) + delta.logprobs
            logprobs = _completion_logprobs(items, offsets[i])
            offsets[i] += sum(len(item.token) for item in items)
        started[i] = True
        completion_tokens += delta.completion_tokens
        yield chunk([CompletionChoice(text=text, index=i, finish_reason=delta.finish_reason, logprobs=logprobs)])
    if include_usage:
        yield chunk([], _usage(prompt_tokens, completion_tokens))
    yield sse("[DONE]")


# -- /v1/chat/completions ----------------------------------------------------------------------

def _chat_logprobs(items: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(content=[
        WireTokenLogprob(token=i.token, logprob=i.logprob, bytes=list(i.token.encode()),
                         top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in i.top])
        for i in items])


async def chat(engine: InferenceEngine, target: ModelTarget, request: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[str]:
    if request.top_logprobs is not None and not request.logprobs:
        raise invalid("'logprobs' must be true when 'top_logprobs' is set.", param="top_logprobs")
    scheduler = await engine.ascheduler_for(target)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in request.messages]
    prompt_ids = engine.chat_prompt_ids(scheduler.tokenizer, messages)
    wanted = request.max_completion_tokens or request.max_tokens or engine.settings.max_tokens_default
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    options = _options(request, _budget(_context_length(scheduler), prompt_ids, wanted, "messages"), logprobs)
    completion_id, created = new_id("chatcmpl"), now()
    deltas = await engine.generate(target, [(prompt_ids, options)] * request.n)
    if request.stream:
        return _stream_chat(deltas, target, request, len(prompt_ids), completion_id, created)
    choices = _Choices(request.n)
    async for delta in deltas:
        choices.add(delta)
    return ChatCompletion(
        id=completion_id, created=created, model=target.model_id,
        choices=[ChatChoice(index=i, message=AssistantMessage(content=choices.text[i]),
                            finish_reason=choices.last[i].finish_reason,
                            logprobs=_chat_logprobs(choices.logprobs[i]) if request.logprobs else None)
                 for i in range(request.n)],
        usage=_usage(len(prompt_ids), choices.completion_tokens()))


async def _stream_chat(deltas: AsyncIterator[Delta], target: ModelTarget, request: ChatCompletionRequest,
                       prompt_tokens: int, completion_id: str, created: int) -> AsyncIterator[str]:
    include_usage = request.include_usage

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=completion_id, created=created, model=target.model_id, choices=choices,
                                   usage=usage)
        return sse(body.model_dump_json(exclude=None if include_usage else {"usage"}))

    for i in range(request.n):
        yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
    completion_tokens = 0
    async for delta in deltas:
        if delta.error is not None:
            yield _sse_error(delta)
            return
        logprobs = _chat_logprobs(delta.logprobs) if request.logprobs and delta.logprobs else None
        if delta.text or logprobs:
            yield chunk([ChatChunkChoice(index=delta.index, delta=ChatDelta(content=delta.text), logprobs=logprobs)])
        if delta.finish_reason is not None:
            completion_tokens += delta.completion_tokens
            yield chunk([ChatChunkChoice(index=delta.index, delta=ChatDelta(), finish_reason=delta.finish_reason)])
    if include_usage:
        yield chunk([], _usage(prompt_tokens, completion_tokens))
    yield sse("[DONE]")
