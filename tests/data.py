"""Small training files for the tests."""

from __future__ import annotations

import json


def chat_jsonl(n: int = 12) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def completion_jsonl(n: int = 12) -> bytes:
    rows = [{"prompt": f"Double {i}:", "completion": f" {2 * i}"} for i in range(n)]
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def preference_jsonl(n: int = 12, seed: int = 0) -> bytes:
    """OpenAI's DPO format: the reply opening with "Ahoy matey!" is preferred to the plain one."""
    from tests.training.toy_data import pirate_preference_examples

    return "".join(json.dumps(r) + "\n" for r in pirate_preference_examples(n, seed)).encode()
