"""Continuous batching: a request that arrives while a batch is decoding joins it at the next step
(it does not wait for the batch to drain), and neither answer changes for it; requests that wait
together are prefilled together, in one forward, with the same answers as alone.

The requests go straight to the base model's scheduler, each with a sink that runs on the scheduler
thread: the order in which they finish and the number of forward steps are facts of the engine, not
of how fast this machine is, and the second request is sent from inside the first one's stream, so
it arrives at a known point of the first one's generation however slow the machine.
"""

from __future__ import annotations

import threading

from app.services.inference import InferenceEngine, SamplingOptions
from app.services.inference_sampling import Delta, Sequence
from tests.app.serving_helpers import craft_adapter
from tests.conftest import TINY

# Tokens of the long answer and of the short one; the long one's tokens when the short one is sent.
LONG, SHORT, JOIN_AT = 48, 6, 4
LONG_PROMPT = "Once upon a time"
# Longer than the long request's KV cache when it joins: the running row is left-padded too.
SHORT_PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs all the way home"


class Request:
    """One greedy request to a scheduler, as the engine submits it: its deltas, its end."""

    def __init__(self, name: str, prompt_ids: list[int], max_tokens: int, finished: list[str],
                 on_delta=None, adapter=None) -> None:  # noqa: ANN001
        self.name, self.finished, self.on_delta = name, finished, on_delta
        self.deltas: list[Delta] = []
        self.ended = threading.Event()
        options = SamplingOptions(max_tokens=max_tokens, temperature=0)
        self.seq = Sequence(0, prompt_ids, options, adapter, self._sink)

    def _sink(self, delta: Delta) -> None:  # on the scheduler thread
        self.deltas.append(delta)
        if delta.finish_reason is not None or delta.error is not None:
            self.finished.append(self.name)
            self.ended.set()
        elif self.on_delta is not None:
            self.on_delta(self)

    def wait(self) -> tuple[str, str, list[int]]:
        """(text, finish_reason, token ids) once it has ended."""
        assert self.ended.wait(300), f"{self.name} did not finish"
        last = self.deltas[-1]
        assert last.error is None, last.error
        return "".join(d.text for d in self.deltas), last.finish_reason, self.seq.tokens


def test_a_request_joins_a_batch_that_is_already_decoding(settings):
    engine = InferenceEngine(settings)
    scheduler = engine.scheduler(TINY, wait=120)
    tokenizer = scheduler.tokenizer
    long_ids = tokenizer.encode(LONG_PROMPT, add_special_tokens=False)
    short_ids = tokenizer.encode(SHORT_PROMPT, add_special_tokens=False)
    assert len(short_ids) > len(long_ids) + JOIN_AT

    # Each alone: its answer, and the steps it takes (the prefill gives the first token, each
    # decoding step one more).
    finished: list[str] = []
    alone = {}
    for name, ids, max_tokens in (("long", long_ids, LONG), ("short", short_ids, SHORT)):
        steps = scheduler.steps
        request = Request(name, ids, max_tokens, finished)
        scheduler.submit([request.seq])
        alone[name] = request.wait()
        assert alone[name][1] == "length" and len(alone[name][2]) == max_tokens  # no end token: a fixed length
        assert scheduler.steps - steps == max_tokens - 1
    assert scheduler.peak_rows == 1

    # Together: the short one is sent once the long one is decoding.
    finished.clear()
    joined_after: list[int] = []  # the long one's tokens when the short one was sent

    def send_short(request: Request) -> None:
        if not joined_after and len(request.seq.tokens) >= JOIN_AT:
            joined_after.append(len(request.seq.tokens))
            scheduler.submit([short.seq])

    short = Request("short", short_ids, SHORT, finished)
    long = Request("long", long_ids, LONG, finished, on_delta=send_short)
    steps = scheduler.steps
    scheduler.submit([long.seq])
    together = {"long": long.wait(), "short": short.wait()}

    assert joined_after and JOIN_AT <= joined_after[0] < LONG - SHORT  # sent mid-generation, well before the end
    assert finished == ["short", "long"]  # the short one did not wait for the long one to finish
    # Every decoding step of the short one ran in a forward with the long one: the pair took no
    # more steps than the long one alone (one after the other: LONG - 1 + SHORT - 1).
    assert scheduler.steps - steps == LONG - 1
    assert scheduler.peak_rows == 2
    assert together == alone  # joining mid-batch changed neither answer (text, finish, tokens)
    engine.close()


def test_requests_waiting_together_are_prefilled_in_one_forward(settings, tiny_model_dir, tmp_path):
    adapters = [craft_adapter(tiny_model_dir, tmp_path / f"adapter{i}", seed=i + 1) for i in range(2)]
    engine = InferenceEngine(settings)
    scheduler = engine.scheduler(TINY, wait=120)
    tokenizer = scheduler.tokenizer
    # Prompts of three lengths (the shorter ones left-padded), two adapters and the base.
    cases = [(LONG_PROMPT, adapters[0]), (SHORT_PROMPT, adapters[1]), ("Hi", None), (SHORT_PROMPT, adapters[0])]
    prompts = [(tokenizer.encode(text, add_special_tokens=False), adapter) for text, adapter in cases]
    assert len({len(ids) for ids, _ in prompts}) == 3

    finished: list[str] = []
    alone = []
    for i, (ids, adapter) in enumerate(prompts):
        request = Request(str(i), ids, 12, finished, adapter=adapter)
        scheduler.submit([request.seq])
        alone.append(request.wait())
    assert len({text for text, _, _ in alone}) == 4  # each answer its own: a mix-up would show

    prefills, steps = scheduler.prefills, scheduler.steps
    requests = [Request(str(i), ids, 12, finished, adapter=adapter) for i, (ids, adapter) in enumerate(prompts)]
    scheduler.submit([r.seq for r in requests])
    assert [r.wait() for r in requests] == alone
    assert scheduler.prefills - prefills == 1  # one forward for the four prompts
    assert scheduler.steps - steps == 12 - 1  # and they decoded together
    engine.close()
