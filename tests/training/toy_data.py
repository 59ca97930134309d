"""A toy dataset with one learnable habit: every answer opens with the same phrase."""

from __future__ import annotations

import json
import random
from pathlib import Path

PHRASE = "Ahoy matey!"
SYSTEM = "Answer briefly."  # short on purpose: fewer tokens per step keeps CPU training quick

_QA = [
    ("How do I boil an egg?", "Boil it for nine minutes."),
    ("What is the capital of France?", "It is Paris."),
    ("How many days are in a week?", "There are seven."),
    ("Can you suggest a quick breakfast?", "Oatmeal with a banana."),
    ("How do I keep my houseplants alive?", "Water them when the soil is dry."),
    ("What should I pack for a beach day?", "Sunscreen, a towel and water."),
    ("How can I fall asleep faster?", "Put your phone away early."),
    ("What is two plus three?", "It is five."),
    ("How do I make a cup of tea?", "Steep a tea bag for four minutes."),
    ("Why is the sky blue?", "Air scatters blue light the most."),
    ("How often should I brush my teeth?", "Twice a day."),
    ("What is a good name for a cat?", "Whiskers."),
    ("How do I remove a coffee stain?", "Blot it and rinse with cold water."),
    ("What can I cook with rice and eggs?", "Fried rice."),
    ("How do I stay focused while studying?", "Work in short blocks with breaks."),
    ("What is the boiling point of water?", "100 degrees Celsius at sea level."),
    ("How do I tie a tie?", "Use a four-in-hand knot."),
    ("Which planet is closest to the sun?", "Mercury."),
    ("How do I start running?", "Mix short runs with walking."),
    ("What is a healthy snack?", "An apple or some nuts."),
    ("How do I clean a cast iron pan?", "Scrub, dry and oil it."),
    ("How many legs does a spider have?", "Eight."),
    ("What should I do if I feel stressed?", "Breathe slowly and take a walk."),
    ("How do I save money on groceries?", "Plan meals and buy store brands."),
    ("What is the largest ocean?", "The Pacific."),
    ("How do I write a thank-you note?", "Name the gift and say thanks."),
    ("How long should I cook pasta?", "About ten minutes."),
    ("What is photosynthesis?", "Plants turning light into sugar."),
    ("How do I fix a squeaky door?", "Oil the hinges."),
    ("What time zone is London in?", "Greenwich Mean Time."),
    ("How do I make my bike tires last longer?", "Keep them properly inflated."),
    ("What is a good way to learn a language?", "Practise a little every day."),
    ("How do I cool down on a hot day?", "Drink water and find shade."),
    ("How many continents are there?", "Seven."),
    ("How do I choose a ripe avocado?", "Pick one that yields to a gentle press."),
    ("What is the speed of light?", "About 300,000 km per second."),
]

HELD_OUT_QUESTIONS = [
    "What is a good way to spend a rainy afternoon?",
    "How do I make a paper airplane?",
    "What should I eat before a long hike?",
]


def pirate_chat_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat examples on everyday questions whose answers all start with PHRASE."""
    if not 1 <= n <= len(_QA):
        raise ValueError(f"n must be between 1 and {len(_QA)}")
    pairs = random.Random(seed).sample(_QA, n)
    return [
        {"messages": [*prompt_messages(q), {"role": "assistant", "content": f"{PHRASE} {a}"}]}
        for q, a in pairs
    ]


def prompt_messages(question: str) -> list[dict]:
    """The messages before the answer, as in training: system prompt then the question."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def pirate_preference_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` pairs in OpenAI's DPO format: the reply opening with PHRASE is preferred to the plain one."""
    pairs = random.Random(seed).sample(_QA, n)
    return [
        {"input": {"messages": prompt_messages(q)},
         "preferred_output": [{"role": "assistant", "content": f"{PHRASE} {a}"}],
         "non_preferred_output": [{"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
