"""Completions and chat completions on top of the engine, in OpenAI's shapes."""

from __future__ import annotations

from collections.abc import Iterator

from app.core.errors import invalid
from app.core.ids import new_id, now
from app.protocol.completions import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatDelta, Completion, CompletionChoice, CompletionRequest, SamplingParams, Usage,
)
from app.services.event_stream import sse
from app.services.inference import Delta, InferenceEngine, SamplingOptions
from app.services.models import ModelTarget


def _options(params: SamplingParams, max_tokens: int) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=params.temperature, top_p=params.top_p,
                           stop=tuple(params.stop_list()), seed=params.seed)


def _check_context(engine: InferenceEngine, target: ModelTarget, prompt_ids: list[int], max_tokens: int) -> int:
    limit = engine.context_length(target)
    if len(prompt_ids) >= limit:
        raise invalid(f"This model's maximum context length is {limit} tokens, but the prompt has "
                      f"{len(prompt_ids)} tokens.", param="messages", code="context_length_exceeded")
    return min(max_tokens, limit - len(prompt_ids))


def _collect(deltas: Iterator[Delta]) -> tuple[str, Delta]:
    parts = []
    for delta in deltas:
        parts.append(delta.text)
    return "".join(parts), delta


def complete(engine: InferenceEngine, target: ModelTarget, request: CompletionRequest) -> Completion | Iterator[str]:
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if not prompts:
        raise invalid("'prompt' must not be empty", param="prompt")
    encoded = [engine.text_prompt_ids(target, p) for p in prompts]
    budgets = [_check_context(engine, target, ids, request.max_tokens or 16) for ids in encoded]
    completion_id, created = new_id("cmpl"), now()
    if request.stream:
        return _stream_completion(engine, target, request, encoded, budgets, completion_id, created)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, (ids, budget) in enumerate(zip(encoded, budgets)):
        text, last = _collect(engine.stream(target, ids, _options(request, budget)))
        choices.append(CompletionChoice(text=text, index=index, finish_reason=last.finish_reason))
        prompt_tokens += last.prompt_tokens
        completion_tokens += last.completion_tokens
    return Completion(id=completion_id, created=created, model=target.model_id, choices=choices,
                      usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  total_tokens=prompt_tokens + completion_tokens))


def _stream_completion(engine, target, request, encoded, budgets, completion_id, created) -> Iterator[str]:
    for index, (ids, budget) in enumerate(zip(encoded, budgets)):
        for delta in engine.stream(target, ids, _options(request, budget)):
            chunk = Completion(id=completion_id, created=created, model=target.model_id,
                               choices=[CompletionChoice(text=delta.text, index=index,
                                                         finish_reason=delta.finish_reason)])
            yield sse(chunk.model_dump_json(exclude={"usage"}))
    yield sse("[DONE]")


def chat(engine: InferenceEngine, target: ModelTarget, request: ChatCompletionRequest) -> ChatCompletion | Iterator[str]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in request.messages]
    prompt_ids = engine.chat_prompt_ids(target, messages)
    wanted = request.max_completion_tokens or request.max_tokens or engine.settings.max_tokens_default
    options = _options(request, _check_context(engine, target, prompt_ids, wanted))
    completion_id, created = new_id("chatcmpl"), now()
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return _stream_chat(engine, target, prompt_ids, options, completion_id, created, include_usage)
    text, last = _collect(engine.stream(target, prompt_ids, options))
    return ChatCompletion(
        id=completion_id, created=created, model=target.model_id,
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason)],
        usage=Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                    total_tokens=last.prompt_tokens + last.completion_tokens),
    )


def _stream_chat(engine, target, prompt_ids, options, completion_id, created, include_usage) -> Iterator[str]:
    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=completion_id, created=created, model=target.model_id, choices=choices,
                                   usage=usage)
        return sse(body.model_dump_json(exclude=None if include_usage else {"usage"}))

    yield chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
    last = None
    for last in engine.stream(target, prompt_ids, options):
        if last.text:
            yield chunk([ChatChunkChoice(delta=ChatDelta(content=last.text))])
    yield chunk([ChatChunkChoice(delta=ChatDelta(), finish_reason=last.finish_reason)])
    if include_usage:
        yield chunk([], Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                              total_tokens=last.prompt_tokens + last.completion_tokens))
    yield sse("[DONE]")
